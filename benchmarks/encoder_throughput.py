"""Encoder throughput: our Flax DeBERTa-v2 against `transformers`' PyTorch model, same CPU.

Measures tokens per second of the forward pass and of forward + backward (gradient of a
scalar function of the last hidden state w.r.t. every parameter) for the same
deberta-v3-base-like configuration (hidden 768, 12 layers, 12 heads, FFN 3072, vocab
128100, 256 log-buckets, shared-key c2p|p2c relative attention, LayerNorm on the
relative embeddings) on a batch of 8 x 64 tokens. Both models get the same random
weights (ours converted from PyTorch's state dict).

Each of our `--layer_loops` (the encoder's `layer_loop`: "scan", "unroll") is compiled
and measured beside PyTorch in the same run: all measurements (ours per loop mode,
forward and forward + backward, and PyTorch's two) are interleaved repetition by
repetition, so a slow phase of a shared machine hits all of them alike; the figures are
medians. The top-level `forward_ratio` / `forward_backward_ratio` are those of the mode
`layer_loop="auto"` picks on this platform; `<mode>_*` keys hold every mode's figures.
Besides wall time each measurement records its process CPU seconds (user, system) and
minor page faults per call: a step's fresh buffers (XLA:CPU allocates every output and
temporary buffer per execution) are first touched page by page, which shows as system
time. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (set before Python starts) makes glibc
back large allocations with transparent huge pages for both frameworks; the JSON's
`host_memory` records the variable's value. The run also times one float32 matmul of the
encoder's FFN shape ([batch x length, hidden] x [hidden, FFN]) in each framework, in the
same interleaved loop (`ours_matmul_gflops`, `torch_matmul_gflops`, `matmul_ratio`): the
encoder's time is mostly such matmuls, so this ratio of the two math libraries (XLA:CPU's
YNNPACK or Eigen, PyTorch's oneDNN/MKL) bounds what the encoder's ratio can be on a CPU
kind. `--host_memory` (default retain, as the entry points run; see
d2e2s_jax/host_memory.py) configures the whole process, so both frameworks run under it.
`--profile_dir` writes a `jax.profiler` trace of one forward + backward per mode and
prints its costliest XLA ops grouped by the model operation they come from (forward /
backward).

The figures name the machine: CPU model (from /proc/cpuinfo, else `platform`), CPU
count, PyTorch's intra-op threads, and the load average before and after.

  python benchmarks/encoder_throughput.py --repeats 5 --layers 12
  python benchmarks/encoder_throughput.py --repeats 3 --layers 2 --json   # quick

`--json` prints one JSON object with the figures as the last line of output.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # pylint: disable=wrong-import-position

from d2e2s_jax.models import deberta_v2  # pylint: disable=wrong-import-position
from d2e2s_jax.models import deberta_v2_convert  # pylint: disable=wrong-import-position

BASE_CONFIG = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
                   position_buckets=256, max_relative_positions=-1, share_att_key=True, pos_att_type="p2c|c2p",
                   norm_rel_ebd="layer_norm", position_biased_input=False, layer_norm_eps=1e-7,
                   hidden_act="gelu", type_vocab_size=0, pad_token_id=0)


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each measurement")
  parser.add_argument("--layers", type=int, default=12, help="number of encoder layers")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="our compute dtype (PyTorch always runs float32)")
  parser.add_argument("--layer_loops", default="scan,unroll",
                      help=f"comma-separated encoder layer loops to measure, of {list(deberta_v2.LAYER_LOOPS[1:])}")
  parser.add_argument("--profile_dir", default=None,
                      help="write a jax.profiler trace of one forward + backward per loop mode here; print top ops")
  parser.add_argument("--top_ops", type=int, default=12, help="ops printed per mode with --profile_dir")
  common.add_host_memory_argument(parser)
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  if args.repeats < 1 or args.layers < 1 or args.batch < 1 or args.length < 2:
    parser.error("--repeats, --layers, --batch must be >= 1 and --length >= 2")
  args.layer_loops = [mode.strip() for mode in args.layer_loops.split(",") if mode.strip()]
  if not args.layer_loops or set(args.layer_loops) - {"scan", "unroll"}:
    parser.error("--layer_loops must be a comma-separated subset of scan,unroll")
  return args


def measured(function: Callable[[], None]) -> List[float]:
  """[wall s, user CPU s, system CPU s, minor page faults] of one call (process-wide)."""
  before = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  function()
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  return [wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
          float(after.ru_minflt - before.ru_minflt)]


def top_ops(trace_dir: str, hlo_text: str, count: int, calls: int) -> List[List[Any]]:
  """The costliest XLA ops of a perfetto trace, grouped by (phase, kind, model operation).

  Returns [[ms per call of the traced function, phase, kind, operation], ...]: phase is
  "forward" or "backward" (jax's `transpose(jvp(...))` in the op's metadata), kind the
  op's name without its number (`ynn_fusion` and `dot` are matmuls), operation the end
  of the op's `op_name` (which module and primitive it comes from).
  """
  origin = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
    if match:
      origin[match.group(1)] = match.group(2)
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    return []
  with gzip.open(paths[-1], "rt") as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals: Dict[tuple, float] = collections.defaultdict(float)
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X" or "dur" not in event or name.startswith("$") or "Thunk" in name or "Await" in name:
      continue
    op_name = origin.get(name, "")
    phase = "backward" if "transpose(" in op_name else "forward"
    operation = re.sub(r".*?DebertaV2Model\)\)?/", "", op_name)
    operation = re.sub(r"(while/body/)?(closed_call/)?", "", operation)
    totals[(phase, re.sub(r"\.\d+$", "", name), operation or name)] += event["dur"] / 1000 / calls
  ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
  return [[round(ms, 1), *key] for key, ms in ranked]


def main(argv: List[str]) -> Dict[str, float]:
  args = parse_args(argv)
  memory = common.apply_host_memory(args.host_memory)  # before the first computation
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  config = deberta_v2.DebertaV2Config(**{**BASE_CONFIG, "num_hidden_layers": args.layers})
  torch.manual_seed(0)
  hf_config = config.to_transformers()
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch_model = transformers.DebertaV2Model(hf_config).eval()  # eval: dropout off in both
  params = jax.tree_util.tree_map(jnp.asarray, deberta_v2_convert.hf_to_flax(torch_model.state_dict(), config))

  rng = np.random.RandomState(0)
  ids = rng.randint(5, config.vocab_size, (args.batch, args.length)).astype(np.int32)
  mask = np.ones_like(ids)
  weights = rng.normal(size=(args.batch, args.length, config.hidden_size)).astype(np.float32)
  ids_torch, mask_torch, weights_torch = (torch.tensor(x) for x in (ids, mask, weights))
  ids_jax, mask_jax, weights_jax = (jnp.asarray(x) for x in (ids, mask, weights))

  def ours(mode):
    model = deberta_v2.DebertaV2Model(config, dtype=jnp.dtype(args.dtype), layer_loop=mode)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    loss_and_grads = jax.jit(jax.value_and_grad(
        lambda p, i, m, w: jnp.sum(model.apply({"params": p}, i, m).astype(jnp.float32) * w)))
    start = time.perf_counter()
    forward = forward.lower(params, ids_jax, mask_jax).compile()
    loss_and_grads = loss_and_grads.lower(params, ids_jax, mask_jax, weights_jax).compile()
    compile_s = time.perf_counter() - start
    return (lambda: forward(params, ids_jax, mask_jax).block_until_ready(),
            lambda: jax.block_until_ready(loss_and_grads(params, ids_jax, mask_jax, weights_jax)),
            loss_and_grads, compile_s)

  def torch_forward():
    with torch.inference_mode():
      torch_model(ids_torch, mask_torch)

  def torch_forward_backward():
    torch_model.zero_grad(set_to_none=True)
    (torch_model(ids_torch, mask_torch).last_hidden_state * weights_torch).sum().backward()

  figures: Dict[str, Any] = {"load_average_before": list(os.getloadavg())}
  runs: Dict[str, Callable[[], None]] = {"torch_forward": torch_forward,
                                         "torch_forward_backward": torch_forward_backward}
  programs = {}
  for mode in args.layer_loops:
    runs[f"{mode}_forward"], runs[f"{mode}_forward_backward"], programs[mode], compile_s = ours(mode)
    figures[f"{mode}_compile_s"] = compile_s
  matmul_lhs = rng.normal(size=(args.batch * args.length, config.hidden_size)).astype(np.float32)
  matmul_rhs = rng.normal(size=(config.hidden_size, config.intermediate_size)).astype(np.float32)
  matmul_jax = jax.jit(jnp.matmul)
  matmul_lhs_jax, matmul_rhs_jax = jnp.asarray(matmul_lhs), jnp.asarray(matmul_rhs)
  matmul_lhs_torch, matmul_rhs_torch = torch.tensor(matmul_lhs), torch.tensor(matmul_rhs)
  matmuls: Dict[str, Callable[[], None]] = {
      "ours_matmul": lambda: matmul_jax(matmul_lhs_jax, matmul_rhs_jax).block_until_ready(),
      "torch_matmul": lambda: torch.matmul(matmul_lhs_torch, matmul_rhs_torch)}
  matmul_calls = 10  # per timed sample: one call is a few milliseconds
  for function in [*runs.values(), *matmuls.values()]:  # warm-up: first executions, allocator, thread pools
    function()
  samples: Dict[str, List[List[float]]] = {name: [] for name in runs}
  matmul_seconds: Dict[str, List[float]] = {name: [] for name in matmuls}
  for _ in range(args.repeats):
    for name, function in runs.items():
      samples[name].append(measured(function))
    for name, function in matmuls.items():
      matmul_seconds[name].append(common.timed(lambda: [function() for _ in range(matmul_calls)]) / matmul_calls)
  figures["load_average_after"] = list(os.getloadavg())

  tokens = args.batch * args.length
  for name, values in samples.items():
    wall, user, system, faults = (statistics.median(column) for column in zip(*values))
    figures[f"{name}_tokens_per_s"] = tokens / wall
    figures[f"{name}_cpu_s"] = user + system
    figures[f"{name}_system_s"] = system
    figures[f"{name}_minor_faults"] = faults
  for mode in args.layer_loops:
    for phase in ("forward", "forward_backward"):
      figures[f"{mode}_{phase}_ratio"] = (figures[f"{mode}_{phase}_tokens_per_s"] /
                                          figures[f"torch_{phase}_tokens_per_s"])
    figures[f"{mode}_backward_over_forward"] = (figures[f"{mode}_forward_tokens_per_s"] /
                                                figures[f"{mode}_forward_backward_tokens_per_s"] - 1)
  figures["torch_backward_over_forward"] = (figures["torch_forward_tokens_per_s"] /
                                            figures["torch_forward_backward_tokens_per_s"] - 1)
  matmul_flop = 2 * matmul_lhs.shape[0] * matmul_lhs.shape[1] * matmul_rhs.shape[1]
  for name, seconds in matmul_seconds.items():
    figures[f"{name}_gflops"] = matmul_flop / statistics.median(seconds) / 1e9
  figures["matmul_ratio"] = figures["ours_matmul_gflops"] / figures["torch_matmul_gflops"]
  figures["matmul_shape"] = [*matmul_lhs.shape, matmul_rhs.shape[1]]
  auto = deberta_v2.resolve_layer_loop("auto")
  headline = auto if auto in args.layer_loops else args.layer_loops[0]
  for phase in ("forward", "forward_backward"):
    figures[f"ours_{phase}_tokens_per_s"] = figures[f"{headline}_{phase}_tokens_per_s"]
    figures[f"{phase}_ratio"] = figures[f"{headline}_{phase}_ratio"]
  figures["ours_compile_s"] = figures[f"{headline}_compile_s"]
  figures.update(layers=args.layers, batch=args.batch, length=args.length, repeats=args.repeats,
                 torch_threads=torch.get_num_threads(), cpus=os.cpu_count(), dtype=args.dtype,
                 cpu_model=common.cpu_model(), platform=jax.default_backend(), headline_layer_loop=headline,
                 auto_layer_loop=auto, layer_loops=args.layer_loops,
                 host_memory=memory, jax_version=jax.__version__,
                 torch_version=torch.__version__)

  if args.profile_dir:
    for mode in args.layer_loops:
      trace_dir = os.path.join(args.profile_dir, mode)
      jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
      runs[f"{mode}_forward_backward"]()
      jax.profiler.stop_trace()
      figures[f"{mode}_top_ops"] = top_ops(trace_dir, programs[mode].as_text(), args.top_ops, calls=1)

  print(f"DeBERTa-v2 encoder, {args.layers} layers, batch {args.batch} x {args.length} tokens, "
        f"{args.repeats} interleaved repeats (median); {figures['cpu_model']}, {os.cpu_count()} CPUs, torch "
        f"threads {torch.get_num_threads()}, our dtype {args.dtype}; load average "
        f"{figures['load_average_before'][0]:.2f} -> {figures['load_average_after'][0]:.2f}")
  for name in runs:
    ratio = ""
    if not name.startswith("torch"):
      ratio = f"   ratio {figures[name + '_ratio']:.2f}x"
    print(f"  {name:28s} {figures[name + '_tokens_per_s']:9.1f} tok/s   cpu {figures[name + '_cpu_s']:6.2f} s "
          f"(system {figures[name + '_system_s']:5.2f})   faults {figures[name + '_minor_faults']:8.0f}{ratio}")
  print(f"  matmul {figures['matmul_shape']} float32: ours {figures['ours_matmul_gflops']:.0f} GFLOP/s, "
        f"torch {figures['torch_matmul_gflops']:.0f} GFLOP/s   ratio {figures['matmul_ratio']:.2f}x")
  for mode in args.layer_loops:
    print(f"  {mode}: compile {figures[mode + '_compile_s']:.1f} s, backward = "
          f"{figures[mode + '_backward_over_forward']:.2f} forwards (torch "
          f"{figures['torch_backward_over_forward']:.2f})")
    for row in figures.get(f"{mode}_top_ops", []):
      print(f"    {row[0]:8.1f} ms  {row[1]:8s} {row[2]:24s} {row[3]}")
  print(f"  layer_loop=auto on {jax.default_backend()}: {auto}")
  if args.json:
    print(json.dumps(figures, sort_keys=True))
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
