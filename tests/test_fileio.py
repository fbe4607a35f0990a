"""Atomic writes: the destination is either the old or the new content, never a mix."""

import json
import os

import pytest

from d2e2s_jax import fileio


def test_write_json_atomic_replaces_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "results.json"
  fileio.write_json_atomic(path, {"b": 1, "a": [1, 2]})
  fileio.write_json_atomic(path, {"c": 3})
  assert json.loads(path.read_text()) == {"c": 3}
  assert sorted(os.listdir(path.parent)) == ["results.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "out.json"
  fileio.write_text_atomic(path, "old\n")

  def failing_write(temporary):
    with open(temporary, "w") as f:
      f.write("half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    fileio.write_atomic(path, failing_write)
  assert path.read_text() == "old\n"
  assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_replace_directory_swaps_and_restores_on_failure(tmp_path, monkeypatch):
  output = tmp_path / "bundle"
  staging = tmp_path / "staging"
  staging.mkdir()
  (staging / "v").write_text("1")
  fileio.replace_directory(staging, output)
  assert (output / "v").read_text() == "1" and not staging.exists()

  staging.mkdir()
  (staging / "v").write_text("2")
  fileio.replace_directory(staging, output)
  assert (output / "v").read_text() == "2"
  assert sorted(os.listdir(tmp_path)) == ["bundle"]

  # A failed swap puts the old directory back.
  staging.mkdir()
  (staging / "v").write_text("3")
  real_rename = os.rename

  def rename(src, dst):
    if str(src) == str(staging):
      raise OSError("cross-device link")
    return real_rename(src, dst)

  monkeypatch.setattr(fileio.os, "rename", rename)
  with pytest.raises(OSError, match="cross-device"):
    fileio.replace_directory(staging, output)
  assert (output / "v").read_text() == "2"


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
  import os  # pylint: disable=import-outside-toplevel

  plain = tmp_path / "plain.txt"
  plain.write_text("x")
  atomic = tmp_path / "atomic.txt"
  fileio.write_text_atomic(atomic, "x")
  assert os.stat(atomic).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
