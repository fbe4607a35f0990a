"""Shared pytest configuration."""

import os
import pathlib

import pytest

# Tests run on the CPU with float32 matmuls at full precision so parity checks are tight.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight fake CPU devices for the sharding tests. This must happen before jax is imported,
# which is why it lives here; computations without a mesh still run on device 0.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
# The suite's cost is XLA compilation of many small programs, not running them: LLVM's
# optimisation level 0 halves the CPU time of a typical model test (measured 51 s -> 29 s)
# and changes no result beyond the parity tolerances.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir():
  """The read-only benchmark data beside the checkout; skips when absent."""
  if not (SHARED_DATA / "aste").is_dir():
    pytest.skip(f"benchmark data not found at {SHARED_DATA} (only present in the project's workspace)")
  return SHARED_DATA
