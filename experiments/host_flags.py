"""`--host_memory`, defined once for the entry points that compute (train, sweep, predict)."""

from absl import flags

from d2e2s_jax import host_memory

HOST_MEMORY = flags.DEFINE_enum(
    "host_memory", host_memory.DEFAULT_MODE, list(host_memory.MODES),
    "retain: keep the host memory a step frees for the next one (the process restarts itself once "
    "with glibc tunables; on CPU, XLA otherwise page-faults every step's temporary buffer in afresh: "
    "see d2e2s_jax/host_memory.py); system: glibc's defaults.")


def apply() -> None:
  """Runs the process as `--host_memory` says: may re-execute it (same arguments, same PID).

  Call it after the flags are checked (a bad flag then fails once, before the restart)
  and before any work.
  """
  host_memory.restart(HOST_MEMORY.value)
