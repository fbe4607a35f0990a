"""Atomic file and directory writes, so an interrupted run never leaves a half-written output.

A file is written to a temporary name in its destination's directory and renamed over the
destination (`os.replace` is atomic on one file system); a directory is built beside its
destination and swapped in, the old one removed only once the new one is in place.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
  """The process's umask, read without changing it where /proc tells it (Linux)."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except OSError:
    pass
  umask = os.umask(0o022)  # elsewhere: set and restore at once
  os.umask(umask)
  return umask


def write_atomic(path: PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> None:
  """Calls `write(temporary_path)`, then renames the temporary file to `path`.

  The temporary file sits beside `path` as `.<name>.<random><suffix>` and is removed if
  `write` raises.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
  os.close(handle)
  try:
    write(temporary)
    # mkstemp makes the file owner-only; give it the mode a plain open() would.
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def write_text_atomic(path: PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  write_atomic(path, lambda temporary: pathlib.Path(temporary).write_text(text, encoding="utf-8"))


def write_json_atomic(path: PathLike, value: Any) -> None:
  """Writes `value` as indented, key-sorted JSON to `path` atomically."""
  write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def replace_directory(staging: PathLike, output_dir: PathLike) -> None:
  """Renames the finished directory `staging` to `output_dir`.

  An existing `output_dir` is moved aside first and deleted only after the rename
  succeeded; if the rename fails it is put back.
  """
  staging, output_dir = pathlib.Path(staging), pathlib.Path(output_dir)
  if not output_dir.exists():
    os.rename(staging, output_dir)
    return
  backup = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
  os.rename(output_dir, backup)
  try:
    os.rename(staging, output_dir)
  except OSError:
    os.rename(backup, output_dir)
    raise
  shutil.rmtree(backup)
