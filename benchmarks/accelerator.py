"""The accelerator benchmark: xxlarge D2E2S training-step throughput, MFU, memory; ours vs torch.

One prepared script for a GPU/TPU session (issue 7, "Performance"); it also runs on the
CPU with tiny sizes (tests/test_accelerator_benchmark.py). Parts (`--parts`):

* `step_bf16_remat`, `step_lean`, `step_f32_remat`, `step_f32`, `step_bf16`: the real jitted D2E2S
  training step (`trainer.create_train_state` + `trainer.make_train_step`: donated
  state, explicit shardings, mesh `data:1`, the guide's AdamW) of a randomly initialised
  DeBERTa-v2 encoder (default xxlarge: 48 layers, width 1536, 24 heads, FFN 6144, vocab
  128100, 256 position buckets, conv kernel 3) plus the head, on one synthetic but valid
  batch of B = 16 sentences x T = 128 sub-tokens (S = 64 spans, P = 64 pairs, E = 640
  edges: `memory_plan.batch_spec`'s shapes; every row a real sentence of T pieces,
  edges from `graphs.sentence_edges` over a random dependency tree). Compute dtype
  float32 or bfloat16 (parameters and Adam moments stay float32), encoder layers
  rematerialised (`remat_policy="full"`) or not; `step_lean` is the memory-lean mode
  (bfloat16, remat, factored second moment, no first moment, sliced update). Per part: lowering and compile time,
  XLA's `memory_analysis` of the compiled step, median seconds per step over `--steps`
  steps each blocked on its outputs (after `--warmup` untimed steps), the same steps
  dispatched back to back (`pipelined_step_s`), sentences/s, tokens/s (B * T per step),
  model FLOPs utilisation, and the device's peak memory (`memory_stats()`).
* `encoder`: the encoder alone, ours (`DebertaV2Model`, jitted) against `transformers`'
  PyTorch `DebertaV2Model` (eager attention, eval mode) with the same random weights on
  the same device (torch on CUDA when it sees a GPU), forward and forward + backward
  (gradient of sum(last hidden state * fixed weights) w.r.t. every parameter), in float32
  and in bfloat16 (ours: compute dtype bfloat16; torch: `torch.autocast`), measurements
  interleaved repetition by repetition (`common.interleaved`), medians, ratio ours/torch.
  `--encoder_size base` uses `encoder_throughput.BASE_CONFIG` (deberta-v3-base sizes,
  12 layers) instead of the step's sizes. Torch's float32 matmuls run with
  `torch.set_float32_matmul_precision(--torch_f32_precision)`, default "high" (TF32),
  which is what JAX's default precision does on NVIDIA GPUs; "highest" is true float32.
  Torch runs only on the device ours runs on (CPU with CPU, CUDA with a GPU); without a
  usable torch our encoder is timed alone and `torch_error` says why.

FLOPs and MFU come from `d2e2s_jax.training.throughput` (its docstring has the FLOPs
model): `analytic_flops_per_step` is `throughput.train_step_flops` of the step's batch
shape (model FLOPs: no rematerialisation, no optimizer) and the encoder part's
`analytic_forward_flops` is `throughput.analytic_flops` of the encoder alone (x3 for
forward + backward). `mfu` uses this count (`mfu_basis: "analytic"`); XLA's own count
(`throughput.compiled_flops`) is reported beside it as `xla_flops_per_step`, with
`xla_over_analytic` and `mfu_xla`: it includes the recomputation and the optimizer but
counts a while loop's body once, so a ratio far below 1 shows the scanned layers it
missed. The peak FLOP/s comes from `--peak_tflops` or from `throughput.find_peak` by
device kind and compute dtype (dense, no sparsity; TF32 for float32 at JAX's default
matmul precision). Every part reports the peak it used and where it came from.

Memory. `peak_memory_gib` is `jax.devices()[0].memory_stats()["peak_bytes_in_use"]`
where the backend has it (GPU, TPU); JAX cannot reset that peak, so by default
(`--isolate yes`) every part runs in a fresh subprocess of this script. Where there is
no `memory_stats` (CPU), `peak_memory_gib` falls back to the compiled step's
argument + output + temp - alias (`peak_memory_source` says which); `compiled_peak_gib`
is always that estimate. The encoder subprocess runs with
`XLA_PYTHON_CLIENT_PREALLOCATE=false` so that torch can use the rest of the GPU.

Robustness. jraph and orbax, which the library imports at module level but this
benchmark never calls, are replaced by stubs when they cannot be imported
(`stubbed_modules`). A part that fails (an import, an out-of-memory) is recorded as
`{"error": ...}` and the others still run; `--output` gets the whole JSON after every
part (and a part's partial figures while it runs), so a timeout loses nothing already
measured; `--budget_s` skips or stops parts that would run past it. The JSON object is
also printed as the last line of output (`--json`) or as a table.

The device session (one H200, 15 minutes of device time in all including the machine's
start, at most 10 minutes per command). Pass this one line as the device tool's
command, with timeout_s 450 (the budget stops it by about 400 s; the parts run most
wanted first, so a cut loses step_f32, then the encoder comparison):

  PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/accelerator.py --budget_s 400 --json --output $OUT/accelerator.json 2>&1 | tee $OUT/log

If parts were skipped or cut (their rows say "skipped" / "stopped" / "incomplete"), and
time is left, rerun just those, e.g. with timeout_s 300:

  PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/accelerator.py --parts encoder,step_f32 --budget_s 260 --json --output $OUT/accelerator2.json 2>&1 | tee $OUT/log2

Smaller runs: `--parts step_bf16_remat --steps 5`, `--layers 24`, `--encoder_size base`.
On the CPU (minutes, tiny):

  python benchmarks/accelerator.py --layers 2 --hidden 64 --heads 2 --ffn 128 --vocab 1000 \\
      --position_buckets 8 --head_attention_heads 2 --batch 2 --length 16 --spans 8 --pairs 8 \\
      --edges 64 --warmup 1 --steps 1 --encoder_repeats 1 --peak_tflops 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import types
from typing import Any, Callable, Dict, List, Mapping, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

# jax first: memory_plan forces 8 fake CPU devices when it is imported before jax.
# Importing jax does not start a backend; this process starts one only for a part it
# runs itself (so with --isolate yes, the parent never holds the GPU).
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

# Optional packages that the library imports at module level but this benchmark never
# calls (jraph: only graph_implementation="jraph"; orbax: only checkpoints). A device
# machine may lack them; each missing one is replaced by a stub that fails on use.
STUBBED_MODULES: Dict[str, str] = {}


def _stub_missing(name: str) -> None:
  """Imports `name`, or puts a stub module in its place (recorded in STUBBED_MODULES)."""
  try:
    importlib.import_module(name)
    return
  except Exception as exception:  # pylint: disable=broad-except  # ImportError, or a version clash
    reason = f"{type(exception).__name__}: {exception}"
  parts = name.split(".")
  for depth in range(1, len(parts) + 1):
    module_name = ".".join(parts[:depth])
    if module_name in sys.modules and depth < len(parts):
      continue
    module = types.ModuleType(module_name)

    def missing(attribute: str, module_name: str = module_name) -> Any:
      if attribute.startswith("__"):
        raise AttributeError(attribute)
      raise ImportError(f"{module_name}.{attribute}: {name} could not be imported here ({reason}); "
                        "benchmarks/accelerator.py stubbed it")

    module.__getattr__ = missing
    sys.modules[module_name] = module
    if depth > 1:
      setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], module)
  STUBBED_MODULES[name] = reason


for _optional in ("jraph", "orbax.checkpoint"):
  _stub_missing(_optional)

import memory_plan  # pylint: disable=wrong-import-position

from d2e2s_jax import fileio  # pylint: disable=wrong-import-position
from d2e2s_jax.data import graphs  # pylint: disable=wrong-import-position
from d2e2s_jax.data.examples import SENTIMENT_OUTPUTS  # pylint: disable=wrong-import-position
from d2e2s_jax.training import throughput  # pylint: disable=wrong-import-position

GIB = 2**30
SCRIPT = os.path.abspath(__file__)

# part -> (compute dtype, remat policy, TrainConfig optimizer overrides); "encoder" is the
# encoder comparison. `step_lean` is README's 16 GB single-GPU mode.
STEP_PARTS = {
    "step_bf16_remat": ("bfloat16", "full", {}),
    "step_lean": ("bfloat16", "full", {"second_moment": "factored", "first_moment": False,
                                       "optimizer_update": "sliced"}),
    "step_f32_remat": ("float32", "full", {}),
    "step_f32": ("float32", "none", {}),
    "step_bf16": ("bfloat16", "none", {}),
}
PARTS = (*STEP_PARTS, "encoder")
# Most wanted first: a timeout cuts the least important part.
DEFAULT_PARTS = ("step_bf16_remat", "step_lean", "step_f32_remat", "encoder", "step_f32")

# Packages whose versions the figures depend on (read from metadata, nothing imported).
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt",
            "libtpu", "flax", "optax", "numpy", "torch", "transformers")


# ----------------------------------------------------------------------------- flags


def parse_args(argv: List[str]) -> argparse.Namespace:
  """Parses and checks the flags (see the module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {list(PARTS)}")
  parser.add_argument("--layers", type=int, default=48)
  parser.add_argument("--hidden", type=int, default=1536)
  parser.add_argument("--heads", type=int, default=24)
  parser.add_argument("--ffn", type=int, default=6144)
  parser.add_argument("--vocab", type=int, default=128100)
  parser.add_argument("--position_buckets", type=int, default=256)
  parser.add_argument("--head_attention_heads", type=int, default=8, help="heads of the D2E2S head's SemGCN")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128, help="T, sub-tokens per sentence")
  parser.add_argument("--spans", type=int, default=64, help="S, span candidates per sentence")
  parser.add_argument("--pairs", type=int, default=64, help="P, pairs per sentence")
  parser.add_argument("--edges", type=int, default=640, help="E, padded graph edges per sentence")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps (and calls) after compiling")
  parser.add_argument("--steps", type=int, default=10, help="timed training steps per step part")
  parser.add_argument("--encoder_size", choices=("same", "base"), default="same",
                      help="encoder part: the step's sizes, or encoder_throughput.BASE_CONFIG")
  parser.add_argument("--encoder_dtypes", default="float32,bfloat16")
  parser.add_argument("--encoder_repeats", type=int, default=10, help="interleaved repetitions (encoder part)")
  parser.add_argument("--torch_f32_precision", choices=("high", "highest", "medium"), default="high",
                      help="torch.set_float32_matmul_precision for torch's float32 runs (high = TF32)")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="peak TFLOP/s for MFU (default: throughput.PEAK_TFLOPS by device kind and dtype)")
  parser.add_argument("--budget_s", type=float, default=0.0,
                      help="stop starting/continuing parts after this many seconds (0: no limit)")
  parser.add_argument("--isolate", choices=("yes", "no"), default="yes",
                      help="run every part in a fresh subprocess (needed for per-part peak memory)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None, help="also write the JSON here, after every part")
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part
  parser.add_argument("--part_output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.parts = [name.strip() for name in args.parts.split(",") if name.strip()]
  unknown = sorted(set(args.parts) - set(PARTS))
  if unknown or not args.parts:
    parser.error(f"unknown --parts {unknown}; choose from {list(PARTS)}")
  args.encoder_dtypes = [name.strip() for name in args.encoder_dtypes.split(",") if name.strip()]
  if not args.encoder_dtypes or set(args.encoder_dtypes) - {"float32", "bfloat16"}:
    parser.error("--encoder_dtypes must be a subset of float32,bfloat16")
  if min(args.layers, args.batch, args.spans, args.pairs, args.edges, args.steps, args.encoder_repeats) < 1:
    parser.error("--layers, --batch, --spans, --pairs, --edges, --steps, --encoder_repeats must be >= 1")
  if args.warmup < 0 or args.length < 4 or args.vocab < 8:
    parser.error("--warmup must be >= 0, --length >= 4, --vocab >= 8")
  if args.hidden % 2 or args.hidden % args.heads:
    parser.error("--hidden must be even and divisible by --heads")
  if args.edges < args.length:
    parser.error("--edges must be >= --length (every position has a self-loop)")
  if args.part is not None and args.part not in PARTS:
    parser.error(f"unknown --part {args.part!r}")
  return args


# ----------------------------------------------------------------------------- batch


def synthetic_batch(args: argparse.Namespace, max_span_size: int = 6, seed: int = 0) -> Dict[str, np.ndarray]:
  """A training batch of the shapes of `memory_plan.batch_spec(args)`, valid by WORKSPACE.md's contract.

  Every row is a real sentence filling all T positions: `[CLS]` (id 1), T - 2 random
  pieces (ids 5..vocab-1) grouped into words of one piece (80 %) or two, `[SEP]` (id 2).
  A random dependency tree over the words gives the graph (`graphs.sentence_edges`);
  heads are dropped from the last words until the edges fit E. Spans: up to S distinct
  word spans of at most `max_span_size` words (a few gold targets and opinions);
  pairs: up to P ordered pairs of distinct spans, the first ones gold (POSITIVE).
  Unfilled span and pair slots are padding (mask False), as the pipeline pads them.
  """
  spec = memory_plan.batch_spec(args)
  batch = {key: np.zeros(shape, np.dtype(dtype)) for key, (shape, dtype) in spec.items()}
  b, t = args.batch, args.length
  batch["span_token_bounds"][..., 1] = 1  # padding spans are [0, 1), as batching pads them
  rng = np.random.default_rng(seed)
  for row in range(b):
    piece_count = t - 2
    widths: List[int] = []
    while sum(widths) < piece_count:
      widths.append(min(2 if rng.random() < 0.2 else 1, piece_count - sum(widths)))
    starts = 1 + np.concatenate([[0], np.cumsum(widths)[:-1]])
    word_bounds = np.stack([starts, starts + np.asarray(widths)], axis=1).astype(np.int64)
    words = len(widths)
    batch["input_ids"][row] = np.concatenate([[1], rng.integers(5, args.vocab, piece_count), [2]])
    batch["attention_mask"][row] = 1
    # 1-based heads, ROOT (0) for the first word, each other word under an earlier one.
    heads = [0] + [int(rng.integers(1, i + 1)) for i in range(1, words)]
    senders, receivers = graphs.sentence_edges(word_bounds, heads, t)
    for last in range(words - 1, -1, -1):
      if len(senders) <= args.edges:
        break
      heads[last] = 0
      senders, receivers = graphs.sentence_edges(word_bounds, heads, t)
    if len(senders) > args.edges:
      raise ValueError(f"--edges {args.edges} cannot hold the {len(senders)} edges of a {t}-piece sentence "
                       "without a parse")
    batch["graph_senders"][row, :len(senders)] = senders
    batch["graph_receivers"][row, :len(senders)] = receivers
    batch["graph_edge_mask"][row, :len(senders)] = True

    candidates = [(start, start + size) for size in range(1, max_span_size + 1)
                  for start in range(words - size + 1)]
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:args.spans]]
    spans = len(chosen)
    for index, (start, end) in enumerate(chosen):
      batch["span_word_bounds"][row, index] = (start, end)
      batch["span_token_bounds"][row, index] = (word_bounds[start, 0], word_bounds[end - 1, 1])
      batch["span_sizes"][row, index] = end - start
    batch["span_mask"][row, :spans] = True
    gold = min(4, spans)
    batch["span_labels"][row, :gold] = [1 + i % 2 for i in range(gold)]  # target, opinion, ...

    ordered = [(h, k) for h in range(min(spans, 16)) for k in range(min(spans, 16)) if h != k]
    gold_pairs = [(h, h + 1) for h in range(0, gold - 1, 2)]  # (target, opinion)
    rest = [pair for pair in ordered if pair not in gold_pairs]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    pairs = (gold_pairs + rest)[:args.pairs]
    if pairs:
      batch["pair_indices"][row, :len(pairs)] = pairs
      batch["pair_mask"][row, :len(pairs)] = True
      for index in range(min(len(gold_pairs), len(pairs))):
        batch["pair_labels"][row, index, SENTIMENT_OUTPUTS.index("POSITIVE")] = 1.0
    batch["example_index"][row] = row
    batch["example_mask"][row] = True
  return batch


# ----------------------------------------------------------------------------- peaks


def peak_tflops(args: argparse.Namespace, device_kind: str, compute_dtype: str) -> Dict[str, Any]:
  """The peak TFLOP/s an MFU divides by (`--peak_tflops`, else `throughput.find_peak`), and where it came from."""
  kind = throughput.matmul_precision_class(compute_dtype)
  if args.peak_tflops:
    return {"peak_tflops": float(args.peak_tflops), "peak_source": "--peak_tflops", "peak_class": kind}
  peak = throughput.find_peak(device_kind, compute_dtype)
  if peak is None:
    return {"peak_source": f"unknown device_kind {device_kind!r}: pass --peak_tflops", "peak_class": kind}
  return {"peak_tflops": peak.tflops, "peak_class": kind,
          "peak_source": f"throughput.PEAK_TFLOPS[{peak.table_key!r}][{kind!r}] for device_kind {device_kind!r}"}


def mfu(flops_per_step: float, seconds_per_step: float, figures: Mapping[str, Any]) -> Optional[float]:
  """`throughput.utilisation` against the part's `peak_tflops` (None without one)."""
  peak = figures.get("peak_tflops")
  return throughput.utilisation(flops_per_step, seconds_per_step, None if peak is None else peak * 1e12)


# ----------------------------------------------------------------------------- device facts


def device_facts() -> Dict[str, Any]:
  """Platform, kind, count and memory of the first device (starts the backend)."""
  device = jax.devices()[0]
  facts: Dict[str, Any] = {"platform": device.platform, "device_kind": device.device_kind,
                           "device_count": jax.device_count(),
                           "jax_default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision",
                                                                       None))}
  if STUBBED_MODULES:
    facts["stubbed_modules"] = dict(STUBBED_MODULES)
  stats = memory_stats()
  if stats and "bytes_limit" in stats:
    facts["device_memory_limit_gib"] = stats["bytes_limit"] / GIB
  return facts


def memory_stats() -> Optional[Dict[str, Any]]:
  """The first device's allocator statistics, or None (the CPU backend has none)."""
  try:
    return jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None


def compiled_memory(compiled: Any) -> Dict[str, float]:
  """XLA's memory plan of a compiled program, in GiB (empty when unavailable)."""
  try:
    memory = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if memory is None:
    return {}
  figures = {name: getattr(memory, f"{name}_size_in_bytes") / GIB for name in ("argument", "output", "temp", "alias")}
  figures = {f"compiled_{name}_gib": value for name, value in figures.items()}
  figures["compiled_peak_gib"] = (figures["compiled_argument_gib"] + figures["compiled_output_gib"] +
                                  figures["compiled_temp_gib"] - figures["compiled_alias_gib"])
  return figures


def meta() -> Dict[str, Any]:
  """When, where, with what; imports nothing and does not start a backend."""
  versions = {}
  for package in PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  facts: Dict[str, Any] = {
      "stubbed_modules": dict(STUBBED_MODULES),
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
      "python": platform.python_version(), "host_cpus": os.cpu_count(), "versions": versions,
      "env": {key: os.environ[key] for key in ("JAX_PLATFORMS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                               "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_DEFAULT_MATMUL_PRECISION",
                                               "CUDA_VISIBLE_DEVICES") if key in os.environ},
  }
  try:
    query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
    facts["nvidia_smi"] = query.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return facts


# ----------------------------------------------------------------------------- parts


Save = Callable[[Dict[str, Any]], None]


def step_part(args: argparse.Namespace, name: str, save: Save) -> Dict[str, Any]:
  """Times the real training step of one (compute dtype, remat) variant; see the module docstring."""
  from d2e2s_jax.models import d2e2s  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.training import optim, sharding, trainer  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.training.config import TrainConfig  # pylint: disable=import-outside-toplevel

  compute_dtype, remat, optimizer_overrides = STEP_PARTS[name]
  figures: Dict[str, Any] = {**device_facts(), "compute_dtype": compute_dtype, "remat_policy": remat,
                             "optimizer": optimizer_overrides,
                             "batch": args.batch, "length": args.length, "spans": args.spans, "pairs": args.pairs,
                             "edges": args.edges, "layers": args.layers, "hidden": args.hidden,
                             "vocab": args.vocab}
  figures.update(peak_tflops(args, figures["device_kind"], compute_dtype))
  encoder_config = memory_plan.encoder_config(args)
  # A from-scratch encoder of the benchmark's sizes (memory_plan.encoder_config; checked by the settings).
  config = TrainConfig(encoder="scratch", scratch_hidden_size=args.hidden, scratch_heads=args.heads,
                       scratch_layers=args.layers, scratch_intermediate_size=args.ffn,
                       remat_policy=remat, compute_dtype=compute_dtype, hidden_dim=args.hidden // 2, attention_heads=args.head_attention_heads, mesh="data:1",
                       batch_size=args.batch, seed=args.seed, **optimizer_overrides)
  model_config = config.model_config(encoder_config)
  model = d2e2s.D2E2S(model_config)
  optimizer_config = config.optimizer_config()
  total_steps = 1000
  optimizer = optim.make_optimizer(optimizer_config, total_steps)
  schedule = optim.learning_rate_schedule(optimizer_config, total_steps)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  batch = synthetic_batch(args, config.max_span_size, args.seed)

  start = time.perf_counter()
  state, state_shardings = trainer.create_train_state(model, optimizer, batch, config.seed, mesh)
  jax.block_until_ready(state)
  figures["init_s"] = time.perf_counter() - start
  figures["param_count"] = int(sum(np.size(leaf) for leaf in jax.tree.leaves(state.params)))
  figures["dense_param_count"] = throughput.dense_parameter_counts(state.params)["per_token"]
  step = trainer.make_train_step(model, optimizer, schedule, model_config, 1, mesh, state_shardings,
                                 optim.make_update_fn(optimizer_config, total_steps, optimizer),
                                 hyper=trainer.runtime_hyperparameters(optimizer_config, model_config, total_steps))
  device_batch = jax.block_until_ready(sharding.shard_batch(batch, mesh))

  start = time.perf_counter()
  lowered = step.lower(state, device_batch)
  figures["lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  figures["compile_s"] = time.perf_counter() - start
  figures.update(compiled_memory(compiled))
  figures["analytic_flops_per_step"] = throughput.train_step_flops(model_config, args.batch, args.length, args.spans,
                                                                  args.pairs, params=state.params)
  flops = throughput.compiled_flops(compiled)
  if flops is not None:
    figures["xla_flops_per_step"] = flops
    figures["xla_over_analytic"] = flops / figures["analytic_flops_per_step"]
  common.log(f"[{name}] {figures['param_count'] / 1e6:.1f}M parameters; init {figures['init_s']:.1f} s, "
             f"compile {figures['compile_s']:.1f} s")
  save(figures)

  metrics = None
  for _ in range(args.warmup):
    state, metrics = jax.block_until_ready(compiled(state, device_batch, step.runtime_values))
  seconds = []
  for _ in range(args.steps):
    begin = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, device_batch, step.runtime_values))
    seconds.append(time.perf_counter() - begin)
  begin = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, device_batch, step.runtime_values)
  jax.block_until_ready((state, metrics))
  figures["pipelined_step_s"] = (time.perf_counter() - begin) / args.steps
  metrics = jax.device_get(metrics)

  step_s = common.median(seconds)
  tokens = args.batch * args.length
  figures.update(step_s=step_s, step_min_s=min(seconds), steps_timed=len(seconds), warmup_steps=args.warmup,
                 sentences_per_s=args.batch / step_s, tokens_per_s=tokens / step_s,
                 analytic_tflops_per_s=figures["analytic_flops_per_step"] / step_s / 1e12,
                 final_loss=float(metrics["loss"]), total_skips=int(metrics["total_skips"]),
                 mfu_basis="analytic")
  if "peak_tflops" in figures:
    figures["mfu"] = mfu(figures["analytic_flops_per_step"], step_s, figures)
    if "xla_flops_per_step" in figures:
      figures["mfu_xla"] = mfu(figures["xla_flops_per_step"], step_s, figures)
  stats = memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    figures["peak_memory_gib"] = stats["peak_bytes_in_use"] / GIB
    figures["peak_memory_source"] = "memory_stats"
  elif "compiled_peak_gib" in figures:
    figures["peak_memory_gib"] = figures["compiled_peak_gib"]
    figures["peak_memory_source"] = "memory_analysis"
  common.log(f"[{name}] step {step_s * 1e3:.1f} ms, {figures['tokens_per_s']:.0f} tokens/s, "
             f"MFU {figures.get('mfu', float('nan')):.3f}, peak memory {figures.get('peak_memory_gib', 0):.2f} GiB")
  return figures


def _load_torch(jax_platform: str) -> Any:
  """(torch, transformers, torch device) or an error string: torch must see the device ours runs on.

  Torch on the host beside ours on an accelerator would be no comparison (and would take
  minutes at xxlarge size), so it is refused.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except Exception as exception:  # pylint: disable=broad-except
    return _error(exception)
  if jax_platform == "cpu":
    return torch, transformers, "cpu"
  if jax_platform == "gpu" and torch.cuda.is_available():
    return torch, transformers, "cuda"
  return f"torch {torch.__version__} has no {jax_platform} device (cuda available: {torch.cuda.is_available()})"


def encoder_part(args: argparse.Namespace, save: Save) -> Dict[str, Any]:
  """Ours against transformers' PyTorch DebertaV2Model on the same device, same weights.

  Without a usable torch (import error, or no torch device where ours runs) our encoder
  is still timed, on its own random weights, and `torch_error` says why.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import encoder_throughput  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.models import deberta_v2, deberta_v2_convert  # pylint: disable=import-outside-toplevel

  figures: Dict[str, Any] = device_facts()
  if args.encoder_size == "base":
    config = deberta_v2.DebertaV2Config(**encoder_throughput.BASE_CONFIG)
  else:
    config = memory_plan.encoder_config(args)
  figures.update(encoder_size=args.encoder_size, layers=config.num_hidden_layers, hidden=config.hidden_size,
                 vocab=config.vocab_size, batch=args.batch, length=args.length, repeats=args.encoder_repeats)
  loaded = _load_torch(figures["platform"])
  torch = None
  if isinstance(loaded, str):
    figures["torch_error"] = loaded
    common.log(f"[encoder] no torch comparison: {loaded}")
  else:
    torch, transformers, torch_device = loaded
    figures.update(torch_device=torch_device, torch_f32_precision=args.torch_f32_precision, same_device=True)
    if torch_device == "cuda":
      figures["torch_device_name"] = torch.cuda.get_device_name(0)
    else:
      figures["torch_threads"] = torch.get_num_threads()

  start = time.perf_counter()
  if torch is not None:
    torch.manual_seed(args.seed)
    hf_config = config.to_transformers()
    try:
      hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
    except (AttributeError, ValueError):  # DeBERTa-v2 has no other implementation anyway
      pass
    try:
      with torch.device(torch_device):
        torch_model = transformers.DebertaV2Model(hf_config)
    except (TypeError, AttributeError, RuntimeError):  # no device context: build on the host, then move
      torch_model = transformers.DebertaV2Model(hf_config).to(torch_device)
    torch_model.eval()  # dropout off, as ours (deterministic by default)
    params = jax.device_put(deberta_v2_convert.hf_to_flax(torch_model.state_dict(), config), jax.devices()[0])
  else:
    params = deberta_v2.init_params(deberta_v2.DebertaV2Model(config), jax.random.key(args.seed))
  params = jax.block_until_ready(params)
  figures["build_s"] = time.perf_counter() - start
  figures["param_count"] = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
  forward_flops = throughput.analytic_flops(config, throughput.dense_parameter_counts(params), args.batch,
                                            args.length, training=False)
  figures["analytic_forward_flops"] = forward_flops

  rng = np.random.RandomState(args.seed)
  ids = rng.randint(5, config.vocab_size, (args.batch, args.length)).astype(np.int32)
  mask = np.ones_like(ids)
  weights = rng.normal(size=(args.batch, args.length, config.hidden_size)).astype(np.float32)
  ids_j, mask_j, weights_j = jax.device_put((ids, mask, weights), jax.devices()[0])
  tokens = args.batch * args.length

  for dtype in args.encoder_dtypes:
    common.log(f"[encoder] {dtype}: compiling ours ...")
    model = deberta_v2.DebertaV2Model(config, dtype=jnp.dtype(dtype))
    forward = jax.jit(lambda p, i, m, model=model: model.apply({"params": p}, i, m))
    loss_and_grads = jax.jit(jax.value_and_grad(
        lambda p, i, m, w, model=model: jnp.sum(model.apply({"params": p}, i, m).astype(jnp.float32) * w)))
    row: Dict[str, Any] = {}
    begin = time.perf_counter()
    forward_compiled = forward.lower(params, ids_j, mask_j).compile()
    backward_compiled = loss_and_grads.lower(params, ids_j, mask_j, weights_j).compile()
    row["ours_compile_s"] = time.perf_counter() - begin

    def ours_forward():
      forward_compiled(params, ids_j, mask_j).block_until_ready()

    def ours_forward_backward():
      jax.block_until_ready(backward_compiled(params, ids_j, mask_j, weights_j))

    runs = {"ours_forward": ours_forward, "ours_forward_backward": ours_forward_backward}
    if torch is not None:
      runs.update(_torch_runs(torch, torch_model, torch_device, dtype, (ids, mask, weights)))
      torch.set_float32_matmul_precision(args.torch_f32_precision)
      if torch_device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(max(1, args.warmup)):
      for function in runs.values():
        function()
    seconds = common.interleaved(runs, args.encoder_repeats)
    row.update(peak_tflops(args, figures["device_kind"], dtype))
    for run, values in seconds.items():
      median = common.median(values)
      flops = forward_flops * (3 if run.endswith("backward") else 1)
      row[f"{run}_s"] = median
      row[f"{run}_tokens_per_s"] = tokens / median
      row[f"{run}_tflops_per_s"] = flops / median / 1e12
      if "peak_tflops" in row:
        row[f"{run}_mfu"] = mfu(flops, median, row)
    message = (f"[encoder] {dtype}: ours forward {row['ours_forward_tokens_per_s']:.0f}, forward+backward "
               f"{row['ours_forward_backward_tokens_per_s']:.0f} tokens/s")
    if torch is not None:
      for phase in ("forward", "forward_backward"):
        row[f"{phase}_ratio"] = row[f"ours_{phase}_tokens_per_s"] / row[f"torch_{phase}_tokens_per_s"]
      if torch_device == "cuda":
        row["torch_peak_memory_gib"] = torch.cuda.max_memory_allocated() / GIB
      message += (f"; torch {row['torch_forward_tokens_per_s']:.0f}, {row['torch_forward_backward_tokens_per_s']:.0f}"
                  f" (ours/torch {row['forward_ratio']:.2f}x, {row['forward_backward_ratio']:.2f}x)")
    stats = memory_stats()
    if stats and "peak_bytes_in_use" in stats:
      row["ours_peak_memory_gib_cumulative"] = stats["peak_bytes_in_use"] / GIB
    figures[dtype] = row
    common.log(message)
    save(figures)
  return figures


def _torch_runs(torch: Any, torch_model: Any, device: str, dtype: str,
                arrays: Any) -> Dict[str, Callable[[], None]]:
  """Torch's forward and forward + backward on `device`, float32 or bfloat16 autocast, synchronised."""
  ids, mask, weights = (torch.tensor(x, device=device) for x in arrays)
  ids = ids.long()

  def autocast():
    if dtype == "bfloat16":
      return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def synchronize():
    if device == "cuda":
      torch.cuda.synchronize()

  def torch_forward():
    with torch.inference_mode(), autocast():
      torch_model(ids, mask)
    synchronize()

  def torch_forward_backward():
    torch_model.zero_grad(set_to_none=True)
    with autocast():
      hidden = torch_model(ids, mask).last_hidden_state
    (hidden.float() * weights).sum().backward()
    synchronize()

  return {"torch_forward": torch_forward, "torch_forward_backward": torch_forward_backward}


def run_part(args: argparse.Namespace, name: str, save: Save) -> Dict[str, Any]:
  """Runs one part in this process."""
  if name == "encoder":
    return encoder_part(args, save)
  return step_part(args, name, save)


# ----------------------------------------------------------------------------- driver


def _error(exception: BaseException) -> str:
  return f"{type(exception).__name__}: {exception}"[:2000]


def run_isolated(argv: List[str], name: str, timeout: Optional[float],
                 on_partial: Callable[[Dict[str, Any]], None] = lambda figures: None) -> Dict[str, Any]:
  """Runs one part in a subprocess of this script; returns its figures (partial ones on failure).

  The subprocess's output is passed on line by line to stderr (so stdout keeps only the
  figures); the partial figures it saves are handed to `on_partial` as they appear; it
  is killed when `timeout` seconds run out.
  """
  env = dict(os.environ)
  if name == "encoder":
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU to torch too
  tail: List[str] = []
  error = None
  with tempfile.TemporaryDirectory(prefix=f"accelerator_{name}_") as directory:
    part_output = os.path.join(directory, "part.json")
    command = [sys.executable, "-u", SCRIPT, *argv, "--part", name, "--part_output", part_output]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=str(common.REPO_ROOT)) as process:

      def pump():
        for line in process.stdout:
          common.log(line.rstrip("\n"))
          tail.append(line.rstrip("\n"))
          del tail[:-30]

      reader = threading.Thread(target=pump, daemon=True)
      reader.start()
      deadline = None if timeout is None else time.monotonic() + timeout
      seen = None
      while True:
        try:
          process.wait(timeout=5 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic())))
          break
        except subprocess.TimeoutExpired:
          pass
        if os.path.exists(part_output) and os.stat(part_output).st_mtime_ns != seen:
          seen = os.stat(part_output).st_mtime_ns
          with open(part_output, encoding="utf-8") as f:
            on_partial(json.load(f))
        if deadline is not None and time.monotonic() >= deadline:
          process.kill()
          process.wait()
          error = f"stopped after {timeout:.0f} s (--budget_s)"
          break
      reader.join(timeout=10)
    figures: Dict[str, Any] = {}
    if os.path.exists(part_output):
      with open(part_output, encoding="utf-8") as f:
        figures = json.load(f)
  if error is None and process.returncode != 0:
    error = f"exit status {process.returncode}: " + " | ".join(tail[-8:])
  if error is None and not figures:
    error = "the part wrote no figures"
  if error is not None:
    figures["error"] = error
  return figures


def summary_lines(results: Mapping[str, Any]) -> List[str]:
  """A table of the headline figures: one line per step part and per encoder dtype, and errors."""
  lines = []
  for name, row in results["parts"].items():
    if "step_s" in row:
      mfu = f"{row['mfu']:.3f}" if "mfu" in row else "n/a"
      lines.append(f"{name:16s} step {row['step_s'] * 1e3:8.1f} ms  {row['sentences_per_s']:8.1f} sent/s  "
                   f"{row['tokens_per_s']:9.0f} tok/s  MFU {mfu} (peak {row.get('peak_tflops', 'n/a')} TFLOP/s)  "
                   f"peak mem {row.get('peak_memory_gib', float('nan')):.2f} GiB ({row.get('peak_memory_source')})  "
                   f"compile {row['compile_s']:.1f} s")
    for dtype in ("float32", "bfloat16"):
      r = row.get(dtype)
      if not isinstance(r, dict) or "ours_forward_tokens_per_s" not in r:
        continue
      line = (f"{'encoder ' + dtype:16s} {row['layers']} layers, width {row['hidden']}: forward ours "
              f"{r['ours_forward_tokens_per_s']:9.0f} tok/s")
      if "forward_ratio" in r:
        line += f", torch {r['torch_forward_tokens_per_s']:9.0f} ({r['forward_ratio']:.2f}x)"
      line += f"; fwd+bwd ours {r['ours_forward_backward_tokens_per_s']:9.0f} tok/s"
      if "forward_backward_ratio" in r:
        line += f", torch {r['torch_forward_backward_tokens_per_s']:9.0f} ({r['forward_backward_ratio']:.2f}x)"
      lines.append(line)
    if "torch_error" in row:
      lines.append(f"{name:16s} no torch comparison: {row['torch_error']}")
    if "error" in row:
      lines.append(f"{name:16s} ERROR {row['error']}")
  return lines


def main(argv: List[str]) -> Dict[str, Any]:
  """Runs the parts (or, with the internal --part, one part) and returns the figures."""
  args = parse_args(argv)
  if args.part is not None:  # a subprocess of --isolate yes
    def save_part(figures: Dict[str, Any]) -> None:
      if args.part_output:
        fileio.write_json_atomic(args.part_output, figures)
    figures = run_part(args, args.part, save_part)
    save_part(figures)
    return figures

  start = time.monotonic()
  results: Dict[str, Any] = {"meta": meta(), "parts": {}}
  results["meta"].update(argv=list(argv), parts=args.parts, isolate=args.isolate)
  if args.isolate == "no" and "encoder" in args.parts:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # read when this process starts a backend
  forwarded = [a for a in argv if a != "--json"]

  def save() -> None:
    results["meta"]["elapsed_s"] = time.monotonic() - start
    if args.output:
      fileio.write_json_atomic(args.output, results)

  for name in args.parts:
    remaining = args.budget_s - (time.monotonic() - start) if args.budget_s > 0 else None
    if remaining is not None and remaining < 30:
      results["parts"][name] = {"error": f"skipped: {max(remaining, 0):.0f} s of --budget_s left"}
      save()
      continue
    common.log(f"=== {name} ===")
    begin = time.monotonic()

    def on_partial(figures: Dict[str, Any], name: str = name) -> None:
      # In --output at once: a kill from outside loses nothing measured so far.
      results["parts"][name] = {**figures, "error": "incomplete: the part was still running"}
      save()

    if args.isolate == "yes":
      figures = run_isolated(forwarded, name, remaining, on_partial)
    else:
      try:
        figures = run_part(args, name, on_partial)
      except Exception as exception:  # pylint: disable=broad-except
        figures = {**results["parts"].get(name, {}), "error": _error(exception)}
        common.log(f"[{name}] failed: {figures['error']}")
    figures["part_wall_s"] = time.monotonic() - begin
    results["parts"][name] = figures
    save()
  save()

  print(f"D2E2S accelerator benchmark, {results['meta']['date_utc']} UTC; encoder {args.layers} layers, width "
        f"{args.hidden}, vocab {args.vocab}; batch {args.batch} x {args.length}")
  for name, row in results["parts"].items():
    if "device_kind" in row:
      print(f"device: {row['platform']} {row['device_kind']} (from {name})")
      break
  for line in summary_lines(results):
    print(line)
  if args.json:
    common.emit(results, as_json=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
