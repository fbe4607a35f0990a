"""Two workers of one sweep on a real PostgreSQL server that the test starts itself.

The server gets its own data directory under /tmp, listens on a free loopback port only,
and runs as an unprivileged user (`postgres`, else `nobody`, through `runuser` when the
tests run as root). The test skips, saying why, when the server binaries
(/usr/lib/postgresql/*/bin/initdb: `.ci/run` installs them on Debian as root) or the
psycopg driver (the test extra; SQLAlchemy's default for postgresql:// URLs) are absent.
"""

import glob
import json
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import optuna
import pytest

from tests.test_sweep import ENV, REPO, STATES, _flagfile, _write

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _server_user():
  """The command prefix that runs the server as an unprivileged user, and that user's ids."""
  if os.geteuid() != 0:
    return [], None
  for name in ("postgres", "nobody"):
    try:
      entry = pwd.getpwnam(name)
    except KeyError:
      continue
    if not shutil.which("runuser"):
      pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
    return ["runuser", "-u", name, "--"], entry
  pytest.skip("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")


@pytest.fixture
def postgres_url():
  if not INITDB:
    pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); .ci/run installs them "
                "(apt-get install postgresql) when it runs as root on Debian")
  psycopg = pytest.importorskip("psycopg", reason="the psycopg driver is missing (pip install -e '.[test]')")
  bindir = pathlib.Path(INITDB[-1]).parent
  prefix, user = _server_user()
  base = pathlib.Path(tempfile.mkdtemp(prefix="d2e2s_postgres_"))  # /tmp: reachable by the server's user
  if user is not None:
    os.chown(base, user.pw_uid, user.pw_gid)
  data, port = base / "data", _free_port()
  subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                 check=True, capture_output=True)
  log = open(base / "server.log", "wb")  # pylint: disable=consider-using-with
  server = subprocess.Popen(prefix + [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={base}",
                                      "-c", "fsync=off"], stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 60
    while True:
      try:
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
        break
      except psycopg.OperationalError:
        assert server.poll() is None, (base / "server.log").read_text()
        assert time.time() < deadline, "PostgreSQL did not start in 60 s"
        time.sleep(0.2)
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
  finally:
    server.terminate()
    server.wait(timeout=60)
    log.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_and_stop_at_its_total(tmp_path, postgres_url):
  flagfile = _flagfile(tmp_path / "tiny.flags")
  # The searched setting does not enter the compiled programs: the cache compiles them once.
  space = _write(tmp_path / "space.json", {
      "parameters": {"max_consecutive_skips": {"distribution": "categorical", "choices": [10, 20, 30]}}})
  study_dir = tmp_path / "study"
  command = [sys.executable, "-m", "experiments.sweep", f"--flagfile={flagfile}", f"--search_space={space}",
             f"--study_dir={study_dir}", f"--storage={postgres_url}", "--study_name=shared", "--n_trials=4",
             f"--compilation_cache_dir={tmp_path / 'xla'}"]
  workers = [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
  outputs = [worker.communicate(timeout=900) for worker in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]

  trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
  assert len(trials) == 4 and all(t.state == STATES.COMPLETE for t in trials)
  # Each worker ran its own trials: together every trial, no trial twice.
  ran = [{int(n) for n in re.findall(r"^\[sweep\] trial (\d+) ", stdout, re.M)} for stdout, _ in outputs]
  assert all(ran) and not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2, 3}, ran
  for trial in trials:
    workdir = study_dir / "trials" / str(trial.number)
    assert json.loads((workdir / "trial.json").read_text())["params"] == trial.params
    steps = [r["step"] for r in map(json.loads, (workdir / "seed_1" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]
  assert "Trials: 4 of 4 requested (4 complete" in (study_dir / "sweep.md").read_text()
  assert "postgres@127.0.0.1" in (study_dir / "sweep.md").read_text()
