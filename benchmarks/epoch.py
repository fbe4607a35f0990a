"""One training epoch on 14res with and without length-grouped batches, in the same run (CPU).

Two arms train the same model (`--config`, a size of `train_step.py`; default `tiny`,
random weights) on the same training split, each with the trainer's own pieces
(`trainer.create_train_state`, `trainer.make_train_step`, `batching.train_batches`):

* `plain`: uniformly shuffled batches, the default T buckets (2 per octave: 16, 24, 32,
  48, ...), i.e. `--length_grouping_batches=0 --token_buckets_per_octave=2`;
* `grouped`: the dataset flagfiles' `--length_grouping_batches=64
  --token_buckets_per_octave=4` (flags `--k`, `--per_octave`).

Epochs alternate between the arms (plain 0, grouped 0, plain 1, grouped 1, ...), so a
slow phase of the shared machine hits both. Every step is timed until its outputs are
ready, and the host's batch building beside it. A step that traces a new shape is a
compilation: its time goes to `compile_s` (epoch 0 compiles every shape of the epoch;
a later epoch may meet a new one). An epoch's `epoch_s` is its steps and batch building
with each compiling step replaced by the median step of the epoch; the figures of the
last epoch (`--epochs`, default 2: one warm epoch) are reported, with `first_epoch_s`
(epoch 0 with its compilations, as a run sees it). `tokens_per_s` counts real sentence
pieces; `padded_tokens_per_s` the positions computed on. `plain_over_grouped` is the
ratio of warm epoch times (> 1: grouping is faster).

  python benchmarks/epoch.py                      # tiny, 2 epochs per arm
  python benchmarks/epoch.py --max_batches 6 --epochs 1 --json   # quick smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=wrong-import-position  # CONFIGS, run_train_config

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from d2e2s_jax.data import batching  # pylint: disable=wrong-import-position
from d2e2s_jax.models import d2e2s  # pylint: disable=wrong-import-position
from d2e2s_jax.training import optim, sharding, trainer  # pylint: disable=wrong-import-position

ARMS = ("plain", "grouped")


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="tiny", choices=sorted(train_step_benchmark.CONFIGS))
  parser.add_argument("--epochs", type=int, default=2, help="epochs per arm; the last one's figures are reported")
  parser.add_argument("--k", type=int, default=64, help="length_grouping_batches of the grouped arm")
  parser.add_argument("--per_octave", type=int, default=4, help="token_buckets_per_octave of the grouped arm")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--max_batches", type=int, default=0,
                      help="stop each epoch after this many batches (0: the whole epoch; for smoke runs)")
  parser.add_argument("--dataset", default="14res")
  parser.add_argument("--data_dir", default=None, help=f"data root (default {common.DEFAULT_DATA_DIR})")
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  if args.epochs < 1 or args.k < 1 or args.batch < 1 or args.max_batches < 0:
    parser.error("--epochs, --k, --batch must be >= 1 and --max_batches >= 0")
  if args.per_octave not in (1, 2, 4, 8):
    parser.error("--per_octave must be one of 1, 2, 4, 8")
  return args


class Arm:
  """One arm's model, train step and batch config."""

  def __init__(self, name: str, data, args: argparse.Namespace):
    tokenizer, _, encoded = data
    sizes = train_step_benchmark.CONFIGS[args.config]
    grouping = dict(length_grouping_batches=args.k, token_buckets_per_octave=args.per_octave) if name == "grouped" \
        else dict(length_grouping_batches=0, token_buckets_per_octave=2)
    config = dataclasses.replace(train_step_benchmark.run_train_config(args.config, tokenizer, args), **grouping)
    encoder_config = dataclasses.replace(config.encoder_config(tokenizer),
                                         vocab_size=max(len(tokenizer), sizes["vocab"]))
    model_config = config.model_config(encoder_config)
    self.name, self.seed, self.encoded, self.args = name, config.seed, encoded["train"], args
    self.batch_config = config.batch_config(tokenizer, training=True)
    self.planned = batching.plan_dataset(self.encoded, self.batch_config, train=True)
    steps = len(self.encoded) // args.batch
    model = d2e2s.D2E2S(model_config)
    self.mesh = sharding.make_mesh(config.mesh)
    optimizer = optim.make_optimizer(config.optimizer_config(), steps * args.epochs)
    schedule = optim.learning_rate_schedule(config.optimizer_config(), steps * args.epochs)
    first = next(batching.train_batches(self.encoded, self.batch_config, 0, self.seed, self.planned))
    self.state, shardings = trainer.create_train_state(model, optimizer, first, self.seed, self.mesh)
    self.step = trainer.make_train_step(  # as the trainer builds it: hyperparameters as runtime inputs
        model, optimizer, schedule, model_config, 1, self.mesh, shardings,
        hyper=trainer.runtime_hyperparameters(config.optimizer_config(), model_config, steps * args.epochs))
    self.shapes = set()

  def epoch(self, epoch: int) -> Dict[str, Any]:
    """Runs one epoch; returns its timings."""
    steps, builds, compiles = [], [], []
    real = padded = 0
    batches = batching.train_batches(self.encoded, self.batch_config, epoch, self.seed, self.planned)
    shapes = set()
    while not self.args.max_batches or len(steps) + len(compiles) < self.args.max_batches:
      start = time.perf_counter()
      batch = next(batches, None)
      if batch is None:
        break
      builds.append(time.perf_counter() - start)
      shapes.add(batch["input_ids"].shape)
      real += int(batch["attention_mask"].sum())
      padded += batch["attention_mask"].size
      traces = self.step.trace_count()
      start = time.perf_counter()
      self.state, metrics = jax.block_until_ready(self.step(self.state, sharding.shard_batch(batch, self.mesh)))
      elapsed = time.perf_counter() - start
      (compiles if self.step.trace_count() > traces else steps).append(elapsed)
      if not np.isfinite(float(jax.device_get(metrics["loss"]))):
        raise SystemExit(f"[{self.name}] epoch {epoch}: non-finite loss")
    self.shapes |= shapes
    median = common.median(steps) if steps else common.median(compiles)
    epoch_s = sum(steps) + median * len(compiles) + sum(builds)
    common.log(f"[{self.name}] epoch {epoch}: {len(steps) + len(compiles)} steps, {len(shapes)} shapes, "
               f"{len(compiles)} compilations ({sum(compiles):.0f} s), epoch {epoch_s:.1f} s")
    return {"steps": len(steps) + len(compiles), "shapes": len(shapes), "compilations": len(compiles),
            "compile_s": sum(compiles), "epoch_s": epoch_s, "first_epoch_s": sum(steps) + sum(compiles) + sum(builds),
            "build_s": sum(builds), "step_median_s": median, "token_efficiency": real / padded,
            "tokens_per_s": real / epoch_s, "padded_tokens_per_s": padded / epoch_s}


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  data = common.load_dataset(args.dataset, args.data_dir, max_length=args.max_length, splits=("train",))
  if data is None:
    figures: Dict[str, Any] = common.skipped(args.dataset, args.data_dir)
  else:
    arms = {name: Arm(name, data, args) for name in ARMS}
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in ARMS}
    for epoch in range(args.epochs):
      for name, arm in arms.items():
        runs[name].append(arm.epoch(epoch))
    figures = {"dataset": args.dataset, "config": args.config, "batch": args.batch, "epochs": args.epochs,
               "k": args.k, "per_octave": args.per_octave, "cpu_model": common.cpu_model(),
               "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    for name in ARMS:
      last = dict(runs[name][-1])
      last["first_epoch_s"] = runs[name][0]["first_epoch_s"]
      last["compile_s"] = sum(run["compile_s"] for run in runs[name])
      last["compilations"] = sum(run["compilations"] for run in runs[name])
      last["distinct_shapes"] = len(arms[name].shapes)
      figures[name] = last
    figures["plain_over_grouped"] = figures["plain"]["epoch_s"] / figures["grouped"]["epoch_s"]
    figures["first_epoch_plain_over_grouped"] = figures["plain"]["first_epoch_s"] / figures["grouped"]["first_epoch_s"]
    if not args.json:
      print(f"== {args.dataset}, {args.config} config, batch {args.batch} ({figures['cpu_model']}, "
            f"{figures['cpu_count']} cores)")
      for name in ARMS:
        print(f"-- {name}")
        common.emit(figures[name], as_json=False)
      common.emit({key: figures[key] for key in ("plain_over_grouped", "first_epoch_plain_over_grouped")}, False)
  if args.json:
    common.emit(figures, as_json=True)
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
