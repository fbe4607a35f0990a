"""Host memory reuse on CPU: keep the memory a step frees for the next step.

XLA:CPU allocates a compiled program's temporary buffer afresh on every execution (1.76
GiB for the training step of a base-sized model at batch 16 x 24 tokens). glibc serves an
allocation that large with `mmap` and returns it with `munmap` when it is freed, so each
step faults all of it in again, a page at a time: about 451,000 minor page faults per
base step on the 2-core AMD EPYC where it was measured (benchmarks/torch_step.py with
`--host_memory` retain and system; README "Host memory").

"retain" runs the process under glibc tunables (`TUNABLES`) that keep freed memory for
reuse: one arena for all threads (memory freed by XLA's worker threads goes back to the
heap the next step allocates from), no `mmap` for large blocks, no trimming of the heap.
The process then holds on to its peak memory, which a training or prediction process
does anyway. glibc reads tunables only when a process starts (`mallopt` later cannot
move threads that already have an arena, which made it work in some runs and not in
others), so `restart(mode, argv)` re-executes the process with `GLIBC_TUNABLES` extended
(same PID, same arguments) unless they are already set. The entry points under
`experiments/` call it after checking their flags (`--host_memory`, default retain).
Library users set the variable themselves before Python starts:
`GLIBC_TUNABLES=$(python -c "from d2e2s_jax import host_memory; print(host_memory.tunables())")`.
Elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Dict, Mapping, Optional, Sequence

MODES = ("retain", "system")
DEFAULT_MODE = "retain"

TUNABLES = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0",
            f"glibc.malloc.trim_threshold={2**64 - 1}")


def is_glibc() -> bool:
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def tunables(existing: str = "") -> str:
  """`existing` GLIBC_TUNABLES with `TUNABLES` added (ours replace entries of the same name)."""
  ours = {entry.split("=", 1)[0] for entry in TUNABLES}
  kept = [entry for entry in existing.split(":") if entry and entry.split("=", 1)[0] not in ours]
  return ":".join(kept + list(TUNABLES))


def retained(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether `environ` (default: this process's) carries every entry of `TUNABLES`."""
  entries = set((os.environ if environ is None else environ).get("GLIBC_TUNABLES", "").split(":"))
  return all(entry in entries for entry in TUNABLES)


def current() -> Dict[str, object]:
  """{"mode": "retain" or "system", "glibc_tunables": the variable's value}, for results files."""
  return {"mode": "retain" if is_glibc() and retained() else "system",
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def restart(mode: str, argv: Optional[Sequence[str]] = None) -> None:
  """Makes this process run in `mode`; for "retain" that may re-execute it (not returning).

  Args:
    mode: "retain" (see the module docstring) or "system" (leave the process as it is).
    argv: the command line to re-execute, default `sys.orig_argv` (the interpreter's own
      arguments, `-m module` included).

  Raises:
    ValueError: for an unknown mode.
  """
  if mode not in MODES:
    raise ValueError(f"host memory mode {mode!r}: must be one of {', '.join(MODES)}")
  if mode == "system" or not is_glibc() or retained():
    return
  environ = dict(os.environ, GLIBC_TUNABLES=tunables(os.environ.get("GLIBC_TUNABLES", "")))
  sys.stdout.flush()
  sys.stderr.flush()
  argv = list(sys.orig_argv if argv is None else argv)
  os.execve(sys.executable, argv, environ)
