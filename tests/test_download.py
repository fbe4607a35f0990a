"""Tests for the dataset downloader, against a local HTTP server; never the internet."""

import contextlib
import functools
import http.server
import json
import pathlib
import socket
import subprocess
import sys
import threading

import pytest

from d2e2s_jax.data import download
from d2e2s_jax.data import readers

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TYPES = {"entities": {"target": {}, "opinion": {}}, "sentiment": {"POSITIVE": {}}}


def _write_remote_tree(root: pathlib.Path, dataset: str = "14res") -> None:
  """A miniature copy of the remote `data/` folder."""
  (root / dataset).mkdir(parents=True)
  (root / "types.json").write_text(json.dumps(TYPES))
  for split in download.SPLITS:
    records = [{"tokens": [split, "record"], "entities": [], "sentiments": [], "pos": [], "dependency": [],
                "orig_id": f"{split}:0"}]
    (root / download.split_file(dataset, split)).write_text(json.dumps(records))


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
  """Serves a directory and records the requested paths."""

  def __init__(self, *args, requests, **kwargs):
    self._requests = requests
    super().__init__(*args, **kwargs)

  def do_GET(self):
    self._requests.append(self.path)
    super().do_GET()

  def log_message(self, *args):  # keep pytest output quiet
    pass


@contextlib.contextmanager
def _serve(directory: pathlib.Path):
  """Serves `directory` on 127.0.0.1 in a daemon thread; yields (base URL, request log)."""
  requests = []
  handler = functools.partial(_RecordingHandler, directory=str(directory), requests=requests)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  server.timeout = 5
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
  finally:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port_url() -> str:
  """A local URL on which nothing listens, so connections are refused at once."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  return f"http://127.0.0.1:{port}/data"


@pytest.fixture
def remote(tmp_path):
  root = tmp_path / "remote"
  _write_remote_tree(root)
  with _serve(root) as (url, requests):
    yield url, requests


def test_downloads_every_file_in_the_d2e2s_layout(remote, tmp_path):
  url, requests = remote
  out = tmp_path / "out"
  assert download.download_aste_data("14res", out, base_url=url, timeout_s=5) == out
  assert sorted(requests) == sorted("/" + name for name in download.dataset_files("14res"))
  assert json.loads((out / "aste" / "types.json").read_text()) == TYPES
  for split in download.SPLITS:
    records = json.loads(readers.dataset_paths(out, "14res", split).read_text())
    assert records[0]["orig_id"] == f"{split}:0"
  assert not list(out.rglob("*.part")), "temporary files must be renamed or removed"


def test_skips_files_already_present(remote, tmp_path):
  url, requests = remote
  out = tmp_path / "out"
  (out / "aste" / "14res").mkdir(parents=True)
  kept = out / "aste" / download.split_file("14res", "train")
  kept.write_text('["kept"]')
  download.download_aste_data("14res", out, base_url=url + "/", timeout_s=5)
  assert kept.read_text() == '["kept"]'
  assert "/" + download.split_file("14res", "train") not in requests
  assert len(requests) == 3
  requests.clear()
  download.download_aste_data("14res", out, base_url=url, timeout_s=5)
  assert requests == [], "a complete dataset is not fetched again"


def test_missing_remote_file_names_the_url_and_leaves_no_partial_file(tmp_path):
  root = tmp_path / "remote"
  _write_remote_tree(root)
  (root / download.split_file("14res", "test")).unlink()
  out = tmp_path / "out"
  with _serve(root) as (url, _):
    with pytest.raises(download.DownloadError, match=r"14res/test_dep_triple_polarity_result.json: HTTP 404"):
      download.download_aste_data("14res", out, base_url=url, timeout_s=5)
  # The files before the failure are kept; the failed one left nothing behind.
  assert (out / "aste" / download.split_file("14res", "dev")).is_file()
  assert sorted(p.name for p in (out / "aste" / "14res").iterdir()) == [
      "dev_dep_triple_polarity_result.json", "train_dep_triple_polarity_result.json"]


def test_a_body_that_is_not_json_is_rejected(tmp_path):
  root = tmp_path / "remote"
  _write_remote_tree(root)
  (root / "types.json").write_text("<html>rate limited</html>")
  out = tmp_path / "out"
  with _serve(root) as (url, _):
    with pytest.raises(download.DownloadError, match="types.json: the downloaded file is not valid JSON"):
      download.download_aste_data("14res", out, base_url=url, timeout_s=5)
  assert not (out / "aste" / "types.json").exists() and not list(out.rglob("*.part"))


def test_unreachable_server_says_how_to_pass_data_dir(tmp_path):
  with pytest.raises(download.DownloadError) as raised:
    download.download_aste_data("14lap", tmp_path / "out", base_url=_closed_port_url(), timeout_s=5)
  message = str(raised.value)
  assert "\n" not in message
  assert "cannot download http://127.0.0.1:" in message and "/data/types.json" in message
  assert "--data_dir" in message
  assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]


def test_unknown_dataset_is_rejected():
  with pytest.raises(ValueError, match="unknown dataset '17res'"):
    download.dataset_files("17res")


def test_ensure_dataset_uses_a_given_complete_folder_without_downloading(tmp_path):
  data_dir = tmp_path / "given"
  _write_remote_tree(data_dir / "aste", "15res")
  # The base URL is unreachable: any download attempt would fail the test.
  assert download.ensure_dataset(data_dir, "15res", tmp_path / "cache", base_url=_closed_port_url()) == data_dir
  assert not (tmp_path / "cache").exists()


def test_ensure_dataset_names_missing_files_of_a_given_folder(tmp_path):
  data_dir = tmp_path / "given"
  _write_remote_tree(data_dir / "aste", "15res")
  (data_dir / "aste" / download.split_file("15res", "dev")).unlink()
  with pytest.raises(FileNotFoundError, match=r"given: missing aste/15res/dev_dep_triple_polarity_result.json"):
    download.ensure_dataset(data_dir, "15res", tmp_path / "cache")
  with pytest.raises(FileNotFoundError, match="missing aste/16res/train_dep_triple_polarity_result.json, aste/16res/"):
    download.ensure_dataset(data_dir, "16res", tmp_path / "cache")


def test_ensure_dataset_downloads_into_the_cache_when_no_folder_is_given(remote, tmp_path):
  url, _ = remote
  cache = tmp_path / "cache"
  assert download.ensure_dataset(None, "14res", cache, base_url=url, timeout_s=5) == cache
  assert download.missing_files(cache, "14res") == []


def _run_cli(*args):
  return subprocess.run([sys.executable, str(REPO_ROOT / "third_party" / "download.py"), *args],
                        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_cli_downloads_and_lists_the_files(remote, tmp_path):
  url, _ = remote
  out = tmp_path / "cli"
  result = _run_cli("--dataset=14res", f"--output={out}", f"--base_url={url}", "--timeout_s=5")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [str(out / "aste" / name) for name in download.dataset_files("14res")]


def test_cli_offline_fails_with_one_line_and_status_1(tmp_path):
  result = _run_cli("--dataset=14res", f"--output={tmp_path / 'cli'}", f"--base_url={_closed_port_url()}",
                    "--timeout_s=5")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: cannot download") and "--data_dir" in lines[0]


def test_ensure_dataset_accepts_the_benchmark_copy(shared_data_dir, tmp_path):
  # The project's read-only copy has the layout a user's --data_dir must have.
  assert download.ensure_dataset(shared_data_dir, "14lap", tmp_path / "cache",
                                 base_url=_closed_port_url()) == shared_data_dir
