"""Helpers shared by the D2E2S training benchmarks (`train_step.py`, `memory_plan.py`).

Importing this module does not import jax, so a benchmark can still set `XLA_FLAGS`
(fake host devices) after importing it and before its own first `import jax`.

* `interleaved(measurements, repeats)`: times several callables repetition by
  repetition (A B C A B C ...), so a slow phase of a shared machine hits all alike.
* `median`, `emit(figures, as_json)`: the benchmarks' reporting convention (the JSON
  object is the last line of output).
* `load_dataset(...)`: the ASTE splits from `../shared/data`, a SentencePiece vocabulary
  trained on the training sentences (cached per vocabulary size), and the sub-token
  encodings; None when the data is absent.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

# Importable as `benchmarks.common` and, when a benchmark runs as a script, as `common`;
# both need the repository root on the path for `d2e2s_jax`.
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux, else `platform`); every benchmark's figures carry it."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def add_host_memory_argument(parser) -> None:
  """`--host_memory`, as the entry points' flag (default retain); see `apply_host_memory`."""
  from d2e2s_jax import host_memory  # pylint: disable=import-outside-toplevel

  parser.add_argument("--host_memory", default=host_memory.DEFAULT_MODE, choices=host_memory.MODES,
                      help="how the process reuses freed memory (d2e2s_jax/host_memory.py); it applies "
                           "to the whole process, so to both frameworks")


def apply_host_memory(mode: str) -> Dict[str, object]:
  """Runs the process in host memory `mode` (may re-execute it: call first); returns `current()`."""
  from d2e2s_jax import host_memory  # pylint: disable=import-outside-toplevel

  host_memory.restart(mode)
  return host_memory.current()


def force_host_devices(count: int) -> None:
  """Asks XLA for `count` fake CPU devices; call before jax is imported."""
  if "jax" in sys.modules:
    raise RuntimeError("force_host_devices must run before jax is imported")
  flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
           if not flag.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def timed(function: Callable[[], object]) -> float:
  """Seconds one call of `function` takes (it must block on its own results)."""
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def interleaved(measurements: Mapping[str, Callable[[], object]], repeats: int) -> Dict[str, List[float]]:
  """Times every callable `repeats` times, interleaved; returns the seconds per name."""
  seconds: Dict[str, List[float]] = {name: [] for name in measurements}
  for _ in range(repeats):
    for name, function in measurements.items():
      seconds[name].append(timed(function))
  return seconds


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def emit(figures: Mapping[str, object], as_json: bool) -> None:
  """Prints the figures: one `key: value` line each, or (`as_json`) one JSON object last."""
  if as_json:
    print(json.dumps(figures, sort_keys=True), flush=True)
  else:
    for key, value in figures.items():
      print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


def log(message: str) -> None:
  """Progress lines on stderr, so that stdout keeps only the figures."""
  print(message, file=sys.stderr, flush=True)


def skipped(dataset: str, data_dir: Optional[os.PathLike]) -> Dict[str, str]:
  """The figures of a benchmark whose dataset is absent (the reason is printed too)."""
  message = f"skipped: no ASTE data under {data_dir or DEFAULT_DATA_DIR}/aste/{dataset}"
  print(message)
  return {"skipped": message}


def load_dataset(dataset: str = "14res", data_dir: Optional[os.PathLike] = None, vocab_size: int = 8000,
                 max_length: int = 256, splits: Sequence[str] = ("train", "dev", "test")):
  """Examples, encodings and a from-scratch tokenizer for an ASTE dataset, or None if absent.

  The SentencePiece vocabulary is trained on the training sentences (as a from-scratch
  run of the trainer does) and cached under the system's temporary directory, keyed by
  dataset and size, so repeated benchmark runs skip the training.

  Returns:
    (tokenizer, {split: [Example]}, {split: [EncodedExample]}) or None.
  """
  from d2e2s_jax import tokenization  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.data import encoding, readers  # pylint: disable=import-outside-toplevel

  root = pathlib.Path(data_dir) if data_dir else DEFAULT_DATA_DIR
  if not (root / "aste" / dataset).is_dir():
    return None
  examples = {split: readers.read_examples(readers.dataset_paths(root, dataset, split), "d2e2s")
              for split in splits}
  cache = pathlib.Path(tempfile.gettempdir()) / f"d2e2s_benchmark_spm_{dataset}_{vocab_size}_{os.getuid()}"
  if not (cache / "spm.model").is_file():
    # Trained beside the cache and renamed into place: concurrent runs never read half a file.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    tokenization.train_sentencepiece_tokenizer((" ".join(e.tokens) for e in examples["train"]), staging,
                                               vocab_size=vocab_size)
    try:
      staging.rename(cache)
    except OSError:  # another run got there first; its files are the same
      shutil.rmtree(staging, ignore_errors=True)
  tokenizer = tokenization.load_tokenizer(cache)
  encoded = {split: encoding.encode_examples(items, tokenizer, max_length=max_length, on_overflow="truncate")
             for split, items in examples.items()}
  return tokenizer, examples, encoded
