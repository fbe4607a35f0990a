"""`host_memory`: freed host memory is reused instead of faulted in again each execution."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from d2e2s_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]
GLIBC = pytest.mark.skipif(not host_memory.is_glibc(), reason="needs glibc")

# Runs in `host_memory.restart(mode)`, then a jitted gradient with 384 MB of temporaries;
# prints the mode, the process id before and after the restart, and the median minor
# page faults of three executions after a warm-up.
_PROGRAM = """
import json, os, resource, statistics, sys
first_pid = os.environ.setdefault("TEST_FIRST_PID", str(os.getpid()))
from d2e2s_jax import host_memory
host_memory.restart(sys.argv[1])
import jax, jax.numpy as jnp

def loss(w, x):
  for i in range(4):
    x = jnp.tanh(x * w[i] + jnp.roll(x, 1, axis=0))
  return jnp.sum(x)

grad = jax.jit(jax.grad(loss))
w, x = jnp.full((4, 1024), 1e-3), jnp.ones((16384, 1024))
grad(w, x).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  grad(w, x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"current": host_memory.current(), "faults": statistics.median(faults),
                  "same_pid": first_pid == str(os.getpid()), "argv": sys.argv[1:]}))
"""


def _run(mode, tunables=None):
  env = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "TEST_FIRST_PID")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  result = subprocess.run([sys.executable, "-c", _PROGRAM, mode], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True, timeout=300)
  return json.loads(result.stdout.strip().splitlines()[-1])


@GLIBC
def test_retain_restarts_once_with_the_tunables():
  system = _run("system")
  retain = _run("retain", tunables="glibc.malloc.hugetlb=0")  # the user's own tunables are kept
  assert system["current"] == {"mode": "system", "glibc_tunables": ""}
  assert retain["current"]["mode"] == "retain"
  assert retain["current"]["glibc_tunables"].startswith("glibc.malloc.hugetlb=0:")
  assert retain["same_pid"] and retain["argv"] == ["retain"]  # re-executed in place, same arguments
  # glibc's defaults map and unmap the temporaries each execution (~100k faults of 4 KiB
  # pages) and never fault fewer in. Retained, this small program reused all, some or none
  # of them from one run to the next (the base-size training step: 99% fewer in every
  # measured run, README "Host memory"); it must never fault in more.
  assert system["faults"] > 50_000
  assert retain["faults"] <= 1.05 * system["faults"]


def test_tunables_replace_only_their_own_entries():
  merged = host_memory.tunables("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=4")
  assert merged.split(":") == ["glibc.malloc.hugetlb=1", *host_memory.TUNABLES]
  assert host_memory.retained({"GLIBC_TUNABLES": merged})
  assert not host_memory.retained({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"})


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="must be one of retain, system"):
    host_memory.restart("lots")


def test_the_entry_points_refuse_an_unknown_mode(tmp_path):
  result = subprocess.run([sys.executable, "-m", "experiments.train", "--host_memory=lots",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "--host_memory=lots: value should be one of <retain|system>" in result.stderr
  assert not (tmp_path / "run").exists()
