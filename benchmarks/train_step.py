"""Training and evaluation throughput of the full D2E2S step on real 14res batches (CPU).

For each model size (`--configs`: `tiny`, hidden 64 / 2 layers; `base`, hidden 768 / 12
layers / 12 heads / FFN 3072 / vocab 128100, random weights) this builds the trainer's
own pieces (`trainer.create_train_state`, `trainer.make_train_step`,
`prediction.make_predict_step`) on one device and walks an epoch of `batching.train_batches` the way `train_and_evaluate`
does, timing each piece of every step separately, in the loop's order (so the pieces are
interleaved repetition by repetition):

* `build`: the host producing the next batch (sampling, padding: `next(iterator)`);
* `transfer`: `sharding.shard_batch` plus `block_until_ready` (host -> device);
* `step`: the jitted training step until its outputs are ready (the device);
* `fetch`: `jax.device_get` of the step's metrics (what the loop does at log steps).

The reference of the same run is the device step: `build_over_step` says how much of a
step the host's batch building costs when it is not overlapped with the device. The
first step of each batch shape compiles; its time is reported apart (`compile_s`) and
left out of the medians. `--max_compiles` bounds the compilations (batches of other
shapes are built and timed but not stepped); `--full_epoch` steps every batch of the
epoch and reports the actual traces beside the distinct shapes of `shape_report`.

Evaluation runs the jitted `predict_step` on dev batches of one shape until its outputs
are ready (`predict`, the device) and the host side of the prediction path
(`decoding.fetch_host_outputs` + `decoding.host_predictions`: `decode`);
`decode_over_predict` is the host's share beside the device's.

Planning, measured both ways in the same run:

* Planning (`batching.plan_dataset`: graphs and shape plans) once per run instead of per
  epoch / per evaluation: the host seconds of an epoch's (and an evaluation's) batch
  building with and without a precomputed plan, interleaved, and the difference as a
  share of the epoch's device time (`train_step_s` x steps per epoch: one shape's step
  time for all batches, so an estimate).
* Dev and test sharing one merged `ShapePlan`: the distinct eval batch shapes of dev +
  test with separate plans and with the merged one, and (configs in
  `--eval_compile_configs`, default tiny) the compilation of a fresh predict step for each
  shape, summed over each set. Other configs extrapolate: shapes x their own
  `eval_compile_s` (one predict compilation), named `*_estimated_s`.

The encoder's layer loop (`--layer_loops scan,unroll`, issue 15): for each config, one
train state, training step and predict step per mode (`TrainConfig.layer_loop`), then
the training step on the same first batch and the predict step on the same dev batch,
interleaved mode by mode for `--steps` / `--eval_batches` repetitions; figures under
`layer_loops/<config>/<mode>` and `unroll_over_scan_*` (time ratios, < 1: unroll is
faster). The main measurements above use the setting's default (`auto`).

The A/B of issue 7's head fixes against the implementations they replaced ran here up to
commit 263aad2 (`--fix_repeats`); it is in the git history, not in the library.

The sentence vocabulary is a SentencePiece model trained on 14res train (about 2.2k
pieces); the base encoder keeps its 128100-row embedding, of which those ids use the
first rows. The machine is shared (two cores, other jobs): timings are noisy; compare
ratios measured in one run rather than absolute figures across runs.

  python benchmarks/train_step.py --configs tiny,base --steps 5
  python benchmarks/train_step.py --configs tiny --steps 2 --eval_batches 1 --json   # quick
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from d2e2s_jax import prediction  # pylint: disable=wrong-import-position
from d2e2s_jax.data import batching  # pylint: disable=wrong-import-position
from d2e2s_jax.models import d2e2s, decoding  # pylint: disable=wrong-import-position
from d2e2s_jax.training import optim, sharding, trainer  # pylint: disable=wrong-import-position
from d2e2s_jax.training.config import TrainConfig  # pylint: disable=wrong-import-position

# name -> (hidden, layers, heads, FFN, position buckets, vocab rows, head attention heads).
CONFIGS = {
    "tiny": dict(hidden=64, layers=2, heads=2, ffn=128, buckets=32, vocab=0, head_heads=2),
    "base": dict(hidden=768, layers=12, heads=12, ffn=3072, buckets=256, vocab=128100, head_heads=8),
}


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="tiny,base", help=f"comma-separated subset of {list(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=5, help="timed training steps per config (after compiling)")
  parser.add_argument("--eval_batches", type=int, default=3, help="timed dev batches per config")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--max_compiles", type=int, default=1, help="training-step shapes compiled per config")
  parser.add_argument("--full_epoch", action="store_true", help="step every batch of epoch 0 (all its shapes)")
  parser.add_argument("--dataset", default="14res")
  parser.add_argument("--data_dir", default=None, help=f"data root (default {common.DEFAULT_DATA_DIR})")
  parser.add_argument("--profile_dir", default=None,
                      help="write a jax.profiler trace of the timed training steps here and print its costliest ops")
  parser.add_argument("--plan_repeats", type=int, default=3,
                      help="interleaved repetitions of the planning measurements (0: skip them)")
  parser.add_argument("--eval_compile_configs", default="tiny",
                      help="configs whose predict step is compiled for every distinct dev+test shape "
                           "(others extrapolate from one compilation)")
  parser.add_argument("--layer_loops", default="",
                      help="comma-separated encoder layer loops (scan,unroll) to A/B interleaved; empty: skip")
  parser.add_argument("--skip_main", action="store_true",
                      help="only the --layer_loops A/B (no epoch walk, evaluation or planning figures)")
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  args.layer_loops = [mode.strip() for mode in args.layer_loops.split(",") if mode.strip()]
  if set(args.layer_loops) - {"scan", "unroll"}:
    parser.error("--layer_loops must be a comma-separated subset of scan,unroll")
  args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
  if not args.configs or set(args.configs) - set(CONFIGS):
    parser.error(f"--configs must be a subset of {list(CONFIGS)}")
  if args.steps < 1 or args.eval_batches < 1 or args.batch < 1 or args.max_compiles < 1:
    parser.error("--steps, --eval_batches, --batch, --max_compiles must be >= 1")
  if args.plan_repeats < 0:
    parser.error("--plan_repeats must be >= 0")
  args.eval_compile_configs = [name.strip() for name in args.eval_compile_configs.split(",") if name.strip()]
  if set(args.eval_compile_configs) - set(CONFIGS):
    parser.error(f"--eval_compile_configs must be a subset of {list(CONFIGS)}")
  return args


def top_ops(trace_dir: str, count: int = 12) -> Dict[str, List[List[Any]]]:
  """The costliest events of a perfetto trace, as {"xla": [[name, ms, calls], ...], "host": [...]}.

  "host" are the Python functions the profiler saw (names starting with "$"); "xla" the
  compiled program's ops (a while loop's time includes its body's ops).
  """
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    return {}
  with gzip.open(paths[-1], "rt") as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0])
  for event in events:
    if event.get("ph") == "X" and "dur" in event:
      totals[event["name"]][0] += event["dur"] / 1000
      totals[event["name"]][1] += 1
  ranked = sorted(totals.items(), key=lambda item: -item[1][0])
  # Runtime wrappers span whole steps; they say nothing about where the time goes.
  wrappers = ("ThunkExecutor", "PjitFunction", "PjRt", "$profiler", "block_until_ready", "$train_step")
  result = {}
  for kind, keep in (("xla", lambda name: not name.startswith("$")), ("host", lambda name: name.startswith("$"))):
    rows = [[name, ms, calls] for name, (ms, calls) in ranked
            if keep(name) and not any(wrapper in name for wrapper in wrappers)][:count]
    for name, ms, calls in rows:
      common.log(f"  {kind} {ms:10.1f} ms {calls:6d}x  {name}")
    result[kind] = rows
  return result


def block(tree: Any) -> Any:
  return jax.block_until_ready(tree)


def run_train_config(name: str, tokenizer, args: argparse.Namespace) -> TrainConfig:
  """The trainer's settings for model size `name` (from-scratch encoder, one device)."""
  sizes = CONFIGS[name]
  return TrainConfig(encoder="scratch", scratch_hidden_size=sizes["hidden"], scratch_layers=sizes["layers"],
                     scratch_heads=sizes["heads"], scratch_intermediate_size=sizes["ffn"],
                     scratch_position_buckets=sizes["buckets"], attention_heads=sizes["head_heads"],
                     batch_size=args.batch, eval_batch_size=args.batch, max_length=args.max_length, mesh="data:1",
                     max_decoded_spans=24)


def _drain(batches) -> int:
  return sum(1 for _ in batches)


EVAL_SPLITS = ("dev", "test")


def _eval_shapes(encoded, eval_config: batching.BatchConfig, prepared) -> Dict[tuple, Dict[str, np.ndarray]]:
  """The distinct eval batch shapes (T, S, E) of dev + test, each with its first batch."""
  shapes: Dict[tuple, Dict[str, np.ndarray]] = {}
  for split in EVAL_SPLITS:
    for batch in batching.eval_batches(encoded[split], eval_config, prepared[split]):
      shapes.setdefault(tuple(batch[key].shape[1] for key in ("input_ids", "span_mask", "graph_edge_mask")), batch)
  return shapes


def planning_figures(encoded, train_config: batching.BatchConfig, eval_config: batching.BatchConfig, seed: int,
                     repeats: int) -> Dict[str, Any]:
  """Host seconds of planning per epoch / evaluation (old) vs once per run (new), and the
  eval shapes of separate vs merged dev/test plans (model-independent figures).

  Returns the figures and, under "_shapes", {"separate": ..., "merged": ...} shape -> batch
  (for the per-config compile timings; not part of the output).
  """
  train = encoded["train"]
  prepared = batching.plan_dataset(train, train_config, train=True)
  separate = {split: batching.plan_dataset(encoded[split], eval_config, train=False) for split in EVAL_SPLITS}
  merged_plan = separate["dev"][1].merge(separate["test"][1])
  merged = {split: (edges, merged_plan) for split, (edges, _) in separate.items()}
  seconds = common.interleaved({
      "plan_train": lambda: batching.plan_dataset(train, train_config, train=True),
      # What train_and_evaluate did before: train_batches planning at every epoch.
      "epoch_build_old": lambda: _drain(batching.train_batches(train, train_config, 1, seed)),
      "epoch_build_new": lambda: _drain(batching.train_batches(train, train_config, 1, seed, prepared)),
      "plan_eval": lambda: [batching.plan_dataset(encoded[split], eval_config, train=False)
                            for split in EVAL_SPLITS],
      # An evaluation of dev and test: planned by eval_batches each time, one plan per split.
      "eval_build_old": lambda: [_drain(batching.eval_batches(encoded[split], eval_config))
                                 for split in EVAL_SPLITS],
      "eval_build_new": lambda: [_drain(batching.eval_batches(encoded[split], eval_config, merged[split]))
                                 for split in EVAL_SPLITS],
  }, repeats)
  figures: Dict[str, Any] = {f"{key}_s": common.median(values) for key, values in seconds.items()}
  figures["epoch_build_old_over_new"] = figures["epoch_build_old_s"] / figures["epoch_build_new_s"]
  figures["eval_build_old_over_new"] = figures["eval_build_old_s"] / figures["eval_build_new_s"]
  figures["steps_per_epoch"] = len(train) // train_config.batch_size
  figures["eval_batches_dev_test"] = sum(-(-len(encoded[split]) // eval_config.batch_size) for split in EVAL_SPLITS)
  shapes = {"separate": _eval_shapes(encoded, eval_config, separate), "merged": _eval_shapes(encoded, eval_config, merged)}
  for kind, kind_shapes in shapes.items():
    figures[f"eval_shapes_{kind}"] = len(kind_shapes)
  figures["_shapes"] = shapes
  return figures


def planning_ratios(figures: Dict[str, Any], planning: Dict[str, Any]) -> Dict[str, Any]:
  """A config's device time beside the host planning cost (per epoch, per evaluation)."""
  ratios: Dict[str, Any] = {}
  epoch_device = figures["train_step_s"] * planning["steps_per_epoch"]
  ratios["epoch_device_estimated_s"] = epoch_device
  ratios["epoch_replanning_over_epoch_device"] = (
      planning["epoch_build_old_s"] - planning["epoch_build_new_s"]) / epoch_device
  ratios["plan_train_over_epoch_device"] = planning["plan_train_s"] / epoch_device
  ratios["epoch_build_old_over_epoch_device"] = planning["epoch_build_old_s"] / epoch_device
  ratios["epoch_build_new_over_epoch_device"] = planning["epoch_build_new_s"] / epoch_device
  if "eval_predict_s" in figures:
    eval_device = figures["eval_predict_s"] * planning["eval_batches_dev_test"]
    ratios["eval_device_estimated_s"] = eval_device
    ratios["eval_replanning_over_eval_device"] = (
        planning["eval_build_old_s"] - planning["eval_build_new_s"]) / eval_device
  return ratios


def eval_compile_figures(model, mesh, state_shardings, params, shapes: Dict[str, Dict[tuple, Any]],
                         name: str) -> Dict[str, Any]:
  """Compiles a fresh predict step for every distinct dev+test shape, sums per plan kind."""
  seconds: Dict[tuple, float] = {}
  for shape, batch in {**shapes["separate"], **shapes["merged"]}.items():
    predict_step = prediction.make_predict_step(model, mesh, state_shardings.params)  # fresh: no cached trace
    device_batch = block(sharding.shard_batch(batch, mesh))
    start = time.perf_counter()
    predict_step.lower(params, device_batch).compile()
    seconds[shape] = time.perf_counter() - start
    common.log(f"[{name}] compiled the predict step for {shape} in {seconds[shape]:.1f} s")
  figures = {f"eval_compile_{kind}_s": sum(seconds[shape] for shape in shapes[kind]) for kind in shapes}
  figures["eval_compile_merged_over_separate"] = figures["eval_compile_merged_s"] / figures["eval_compile_separate_s"]
  figures["eval_compile_per_shape_median_s"] = common.median(list(seconds.values()))
  return figures


def run_config(name: str, data, args: argparse.Namespace, planning: Dict[str, Any]) -> Dict[str, Any]:
  """Times training and evaluation of one model size; returns its figures."""
  sizes = CONFIGS[name]
  tokenizer, _, encoded = data
  config = run_train_config(name, tokenizer, args)
  encoder_config = config.encoder_config(tokenizer)
  encoder_config = dataclasses.replace(encoder_config, vocab_size=max(len(tokenizer), sizes["vocab"]))
  model_config = config.model_config(encoder_config)
  model = d2e2s.D2E2S(model_config)
  mesh = sharding.make_mesh(config.mesh)
  train_config = config.batch_config(tokenizer, training=True)
  eval_config = config.batch_config(tokenizer, training=False)
  optimizer_config = config.optimizer_config()
  steps_per_epoch = len(encoded["train"]) // args.batch
  optimizer = optim.make_optimizer(optimizer_config, steps_per_epoch)
  schedule = optim.learning_rate_schedule(optimizer_config, steps_per_epoch)

  figures: Dict[str, Any] = {"hidden": sizes["hidden"], "layers": sizes["layers"],
                             "vocab": encoder_config.vocab_size, "batch": args.batch}
  train_report = batching.shape_report(encoded["train"], train_config, epoch=0, seed=config.seed)
  eval_report = batching.shape_report(encoded["dev"], eval_config, train=False)
  figures.update({f"train_{k}": v for k, v in train_report.items()})
  figures.update({f"eval_{k}": v for k, v in eval_report.items()})
  # What train_batches / eval_batches redo at the start of every epoch / evaluation.
  figures["plan_train_s"] = common.timed(lambda: batching.plan_dataset(encoded["train"], train_config, train=True))

  common.log(f"[{name}] initialising ...")
  start = time.perf_counter()
  batches = batching.train_batches(encoded["train"], train_config, 0, config.seed)
  first = next(batches)
  figures["first_batch_s"] = time.perf_counter() - start
  state, state_shardings = trainer.create_train_state(model, optimizer, first, config.seed, mesh)
  block(state)
  figures["init_s"] = time.perf_counter() - start - figures["first_batch_s"]
  figures["param_count"] = int(sum(np.size(leaf) for leaf in jax.tree.leaves(state.params)))
  train_step = trainer.make_train_step(model, optimizer, schedule, model_config, 1, mesh, state_shardings)

  pieces: Dict[str, List[float]] = {"build": [], "transfer": [], "step": [], "fetch": []}
  compile_s: Dict[str, float] = {}
  rows: List[int] = []
  stepped = 0
  profiling = False
  batch = first
  limit = steps_per_epoch if args.full_epoch else args.steps
  while True:
    shape = str(batch["input_ids"].shape)
    compiled = shape in compile_s
    if compiled or len(compile_s) < args.max_compiles or args.full_epoch:
      start = time.perf_counter()
      device_batch = block(sharding.shard_batch(batch, mesh))
      transfer = time.perf_counter() - start
      start = time.perf_counter()
      state, metrics = block(train_step(state, device_batch))
      step = time.perf_counter() - start
      start = time.perf_counter()
      jax.device_get(metrics)
      fetch = time.perf_counter() - start
      if compiled:
        pieces["transfer"].append(transfer)
        pieces["step"].append(step)
        pieces["fetch"].append(fetch)
        rows.append(int(batch["example_mask"].sum()))
        stepped += 1
      else:
        compile_s[shape] = step
        common.log(f"[{name}] compiled the train step for {shape} in {step:.1f} s")
        if args.profile_dir and not profiling:
          jax.profiler.start_trace(os.path.join(args.profile_dir, name), create_perfetto_trace=True)
          profiling = True
    if stepped >= limit:
      break
    start = time.perf_counter()
    batch = next(batches, None)
    if batch is None:
      break
    pieces["build"].append(time.perf_counter() - start)
  if profiling:
    jax.profiler.stop_trace()
    figures["profile_top_ops"] = top_ops(os.path.join(args.profile_dir, name))
  if not pieces["step"]:
    raise SystemExit(f"[{name}] no training step was timed: the epoch has too few batches of compiled shapes")
  for piece, seconds in pieces.items():
    figures[f"train_{piece}_s"] = common.median(seconds)
  figures["train_steps_timed"] = len(pieces["step"])
  figures["train_step_traces"] = train_step.trace_count()
  figures["train_compile_s"] = sum(compile_s.values())
  figures["train_compiled_shapes"] = len(compile_s)
  figures["train_sentences_per_s"] = float(np.median(rows)) / figures["train_step_s"]
  figures["train_end_to_end_sentences_per_s"] = float(np.median(rows)) / sum(
      figures[f"train_{piece}_s"] for piece in pieces)
  figures["build_over_step"] = figures["train_build_s"] / figures["train_step_s"]

  # Evaluation: the commonest dev batch shape, one compilation.
  common.log(f"[{name}] evaluating ...")
  start = time.perf_counter()
  eval_list = list(batching.eval_batches(encoded["dev"], eval_config))
  figures["eval_build_all_s"] = time.perf_counter() - start
  shapes = [b["input_ids"].shape for b in eval_list]
  common_shape = max(set(shapes), key=shapes.count)
  chosen = [b for b in eval_list if b["input_ids"].shape == common_shape][:args.eval_batches + 1]
  predict_step = prediction.make_predict_step(model, mesh, state_shardings.params)
  eval_pieces: Dict[str, List[float]] = {"predict": [], "decode": []}
  eval_rows, eval_on_pairs, eval_triplets = [], [], []
  for index, batch in enumerate(chosen):
    device_batch = block(sharding.shard_batch(batch, mesh))
    start = time.perf_counter()
    output = block(predict_step(state.params, device_batch))
    predict = time.perf_counter() - start
    start = time.perf_counter()
    decoded = decoding.fetch_host_outputs(output)
    predictions = decoding.host_predictions(decoded, batch["span_mask"], batch["span_word_bounds"])
    decode = time.perf_counter() - start
    # The host's decoding cost grows with the pairs over the threshold (nearly all of them
    # for random weights: sigmoid(~0) = 0.5 >= 0.4).
    eval_on_pairs.append(int(np.asarray(decoded["sentiment_on"]).sum()))
    eval_triplets.append(sum(len(row.triplet_codes) for row in predictions))
    if index == 0:
      figures["eval_compile_s"] = predict
      continue
    eval_pieces["predict"].append(predict)
    eval_pieces["decode"].append(decode)
    eval_rows.append(int(batch["example_mask"].sum()))
  if eval_pieces["predict"]:
    figures["eval_predict_s"] = common.median(eval_pieces["predict"])
    figures["eval_decode_s"] = common.median(eval_pieces["decode"])
    figures["eval_sentences_per_s"] = float(np.median(eval_rows)) / figures["eval_predict_s"]
    figures["decode_over_predict"] = figures["eval_decode_s"] / figures["eval_predict_s"]
    figures["eval_batches_timed"] = len(eval_pieces["predict"])
    figures["eval_on_pairs_per_batch"] = float(np.median(eval_on_pairs[1:]))
    figures["eval_triplets_per_batch"] = float(np.median(eval_triplets[1:]))
  figures["eval_shape"] = list(common_shape)

  if planning:
    figures.update(planning_ratios(figures, planning))
    if name in args.eval_compile_configs:
      common.log(f"[{name}] compiling the predict step for every dev+test shape ...")
      figures.update(eval_compile_figures(model, mesh, state_shardings, state.params, planning["_shapes"], name))
    elif "eval_compile_s" in figures:
      # One measured predict compilation times the number of shapes.
      for kind in ("separate", "merged"):
        figures[f"eval_compile_{kind}_estimated_s"] = planning[f"eval_shapes_{kind}"] * figures["eval_compile_s"]
  return figures


def layer_loop_figures(name: str, data, args: argparse.Namespace) -> Dict[str, Any]:
  """The training and predict steps of config `name` per encoder layer loop, timed interleaved."""
  sizes = CONFIGS[name]
  tokenizer, _, encoded = data
  base_config = run_train_config(name, tokenizer, args)
  train_config = base_config.batch_config(tokenizer, training=True)
  first = next(batching.train_batches(encoded["train"], train_config, 0, base_config.seed))
  eval_list = list(batching.eval_batches(encoded["dev"], base_config.batch_config(tokenizer, training=False)))
  shapes = [b["input_ids"].shape for b in eval_list]
  eval_batch = next(b for b in eval_list if b["input_ids"].shape == max(set(shapes), key=shapes.count))
  mesh = sharding.make_mesh(base_config.mesh)
  steps_per_epoch = len(encoded["train"]) // args.batch
  device_batch = block(sharding.shard_batch(first, mesh))
  device_eval_batch = block(sharding.shard_batch(eval_batch, mesh))
  pieces, states, figures = {}, {}, {}
  for mode in args.layer_loops:
    config = dataclasses.replace(base_config, layer_loop=mode)
    encoder_config = dataclasses.replace(config.encoder_config(tokenizer),
                                         vocab_size=max(len(tokenizer), sizes["vocab"]))
    model_config = config.model_config(encoder_config)
    model = d2e2s.D2E2S(model_config)
    optimizer_config = config.optimizer_config()
    optimizer = optim.make_optimizer(optimizer_config, steps_per_epoch)
    schedule = optim.learning_rate_schedule(optimizer_config, steps_per_epoch)
    state, state_shardings = trainer.create_train_state(model, optimizer, first, config.seed, mesh)
    train_step = trainer.make_train_step(model, optimizer, schedule, model_config, 1, mesh, state_shardings)
    predict_step = prediction.make_predict_step(model, mesh, state_shardings.params)
    common.log(f"[{name}/{mode}] compiling the train and predict steps ...")
    start = time.perf_counter()
    state, _ = block(train_step(state, device_batch))
    compile_train = time.perf_counter() - start
    start = time.perf_counter()
    block(predict_step(state.params, device_eval_batch))
    figures[mode] = {"train_compile_s": compile_train, "eval_compile_s": time.perf_counter() - start}
    states[mode] = state

    def train(mode=mode, train_step=train_step):
      states[mode], _ = block(train_step(states[mode], device_batch))

    def predict(mode=mode, predict_step=predict_step):
      block(predict_step(states[mode].params, device_eval_batch))

    pieces[f"{mode}/train"], pieces[f"{mode}/predict"] = train, predict
  seconds = common.interleaved({key: fn for key, fn in pieces.items() if key.endswith("/train")}, args.steps)
  seconds.update(common.interleaved({key: fn for key, fn in pieces.items() if key.endswith("/predict")},
                                    args.eval_batches))
  rows, eval_rows = int(first["example_mask"].sum()), int(eval_batch["example_mask"].sum())
  for mode in args.layer_loops:
    figures[mode]["train_step_s"] = common.median(seconds[f"{mode}/train"])
    figures[mode]["train_sentences_per_s"] = rows / figures[mode]["train_step_s"]
    figures[mode]["eval_predict_s"] = common.median(seconds[f"{mode}/predict"])
    figures[mode]["eval_sentences_per_s"] = eval_rows / figures[mode]["eval_predict_s"]
  if {"scan", "unroll"} <= set(args.layer_loops):
    for key in ("train_step_s", "eval_predict_s", "train_compile_s"):
      figures[f"unroll_over_scan_{key}"] = figures["unroll"][key] / figures["scan"][key]
  figures.update(train_shape=list(first["input_ids"].shape), eval_shape=list(eval_batch["input_ids"].shape),
                 load_average=list(os.getloadavg()))
  return figures


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  data = common.load_dataset(args.dataset, args.data_dir, max_length=args.max_length,
                             splits=("train",) + EVAL_SPLITS)
  if data is None:
    figures: Dict[str, Any] = common.skipped(args.dataset, args.data_dir)
  else:
    planning = None
    if args.plan_repeats and not args.skip_main:
      common.log("planning: per epoch / evaluation vs once per run; separate vs merged eval plans ...")
      batch_source = run_train_config(args.configs[0], data[0], args)
      planning = planning_figures(data[2], batch_source.batch_config(data[0], training=True),
                                  batch_source.batch_config(data[0], training=False), batch_source.seed,
                                  args.plan_repeats)
    figures = {"dataset": args.dataset, "batch": args.batch, "steps": args.steps, "cpu_count": os.cpu_count(),
               "cpu_model": common.cpu_model(),
               "configs": {} if args.skip_main else {name: run_config(name, data, args, planning)
                                                      for name in args.configs}}
    if args.layer_loops:
      figures["layer_loops"] = {name: layer_loop_figures(name, data, args) for name in args.configs}
    if planning:
      figures["planning"] = {key: value for key, value in planning.items() if not key.startswith("_")}
    if not args.json:
      if planning:
        print("== planning")
        common.emit(figures["planning"], as_json=False)
      for name, values in figures["configs"].items():
        print(f"== {name}")
        common.emit(values, as_json=False)
      for name, values in figures.get("layer_loops", {}).items():
        print(f"== layer loops, {name}")
        common.emit({f"{k}/{kk}" if isinstance(v, dict) else k: vv
                     for k, v in values.items() for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])},
                    as_json=False)
  if args.json:
    common.emit(figures, as_json=True)
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
