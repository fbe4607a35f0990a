"""Our full training step against the released PyTorch step, same sentences and config (CPU).

For each model size (`--configs`, the sizes of `train_step.py`: `tiny`, hidden 64 / 2
layers; `base`, hidden 768 / 12 layers / FFN 3072 / vocab 128100; random weights) both
steps train on the same real 14res batches of one padded shape:

* ours: `trainer.make_train_step` (jitted: forward, loss, backward, clipping, the
  released AdamW, finite guard), one device;
* PyTorch: `d2e2s_jax.testing.torch_reference` (`transformers.DebertaV2Model` + the
  transcription of the released head, its loss, `ReleasedAdamW` with the released
  parameter groups, `clip_grad_norm_`, a linear schedule), eager, with each batch padded
  to its own longest sentence and largest span and pair counts, as the released code
  does (ours pads to our buckets: a little more work for us).

The steps alternate (ours, PyTorch, ours, ...), so a slow phase of the shared machine hits
both; the first step of each is a warm-up (ours: the compilation, `compile_s`) left out
of the medians. PyTorch runs on `--threads` intra-op threads (default: every core); XLA's
CPU client uses one thread per core. The figures name the CPU model: the ratio depends on
the kind of CPU. `--host_memory` (default retain, as the entry points run) configures the
whole process, so both frameworks run under it; run it with `system` for glibc's
defaults.

  python benchmarks/torch_step.py --configs tiny,base --steps 3
  python benchmarks/torch_step.py --configs tiny --steps 2 --json   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=wrong-import-position  # CONFIGS, run_train_config

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position

from d2e2s_jax.data import batching  # pylint: disable=wrong-import-position
from d2e2s_jax.models import d2e2s  # pylint: disable=wrong-import-position
from d2e2s_jax.testing import torch_reference  # pylint: disable=wrong-import-position
from d2e2s_jax.training import optim, sharding, trainer  # pylint: disable=wrong-import-position

CONFIGS = train_step_benchmark.CONFIGS


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="tiny,base", help=f"comma-separated subset of {list(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=3, help="timed steps of each framework per config")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--length_grouping_batches", type=int, default=64,
                      help="the batches' length grouping (the dataset flagfiles' 64; 0 = uniform batches)")
  parser.add_argument("--token_buckets_per_octave", type=int, default=4, help="T buckets (the dataset flagfiles' 4)")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
  parser.add_argument("--dataset", default="14res")
  parser.add_argument("--data_dir", default=None, help=f"data root (default {common.DEFAULT_DATA_DIR})")
  common.add_host_memory_argument(parser)
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
  if not args.configs or set(args.configs) - set(CONFIGS):
    parser.error(f"--configs must be a subset of {list(CONFIGS)}")
  if args.steps < 1 or args.batch < 1 or args.threads < 1 or args.length_grouping_batches < 0:
    parser.error("--steps, --batch, --threads must be >= 1 and --length_grouping_batches >= 0")
  return args


def same_shape_batches(encoded, batch_config: batching.BatchConfig, count: int, seed: int) -> List[Dict[str, np.ndarray]]:
  """`count` training batches of epoch 0 that share the epoch's commonest padded shape."""
  by_shape: Dict[tuple, List[Dict[str, np.ndarray]]] = {}
  for batch in batching.train_batches(encoded, batch_config, 0, seed):
    shape = tuple(batch[key].shape[1] for key in ("input_ids", "span_mask", "pair_mask", "graph_edge_mask"))
    by_shape.setdefault(shape, []).append(batch)
  batches = max(by_shape.values(), key=len)
  if len(batches) < count:
    raise SystemExit(f"the commonest batch shape has {len(batches)} batches; --steps needs {count - 1}")
  return batches[:count]


def run_config(name: str, data, args: argparse.Namespace) -> Dict[str, Any]:
  """Times our step and the PyTorch step of one model size on the same batches."""
  sizes = CONFIGS[name]
  tokenizer, _, encoded = data
  config = dataclasses.replace(train_step_benchmark.run_train_config(name, tokenizer, args),
                               length_grouping_batches=args.length_grouping_batches,
                               token_buckets_per_octave=args.token_buckets_per_octave)
  encoder_config = dataclasses.replace(config.encoder_config(tokenizer), vocab_size=max(len(tokenizer), sizes["vocab"]))
  model_config = config.model_config(encoder_config)
  batches = same_shape_batches(encoded["train"], config.batch_config(tokenizer, training=True), args.steps + 1,
                               config.seed)
  steps_per_epoch = len(encoded["train"]) // args.batch
  optimizer_config = config.optimizer_config()

  common.log(f"[{name}] ours: initialising ...")
  model = d2e2s.D2E2S(model_config)
  mesh = sharding.make_mesh(config.mesh)
  optimizer = optim.make_optimizer(optimizer_config, steps_per_epoch)
  schedule = optim.learning_rate_schedule(optimizer_config, steps_per_epoch)
  state, state_shardings = trainer.create_train_state(model, optimizer, batches[0], config.seed, mesh)
  jax_step = trainer.make_train_step(  # as the trainer builds it: hyperparameters as runtime inputs
      model, optimizer, schedule, model_config, 1, mesh, state_shardings,
      hyper=trainer.runtime_hyperparameters(optimizer_config, model_config, steps_per_epoch))
  device_batches = [jax.block_until_ready(sharding.shard_batch(batch, mesh)) for batch in batches]

  common.log(f"[{name}] PyTorch: initialising ...")
  torch.manual_seed(config.seed)
  torch_model = torch_reference.TorchD2E2S(encoder_config, model_config)
  torch_optimizer = torch_reference.released_optimizer(torch_model, config.lr, config.weight_decay)
  warmup = max(int(config.lr_warmup * steps_per_epoch), 1)
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      torch_optimizer, lambda step: min(step / warmup, max(0.0, (steps_per_epoch - step) / (steps_per_epoch - warmup))))
  torch_step = torch_reference.make_train_step(torch_model, torch_optimizer, scheduler, config.max_grad_norm,
                                               model_config.kl_weight)
  torch_batches = [torch_reference.torch_batch(batch) for batch in batches]

  holder = {"state": state}

  def ours(index: int) -> float:
    holder["state"], metrics = jax_step(holder["state"], device_batches[index])
    return float(jax.device_get(metrics["loss"]))

  seconds: Dict[str, List[float]] = {"ours": [], "torch": []}
  faults: Dict[str, List[int]] = {"ours": [], "torch": []}  # minor page faults per step
  losses: Dict[str, List[float]] = {"ours": [], "torch": []}
  first: Dict[str, float] = {}
  for index in range(args.steps + 1):
    for kind, function in (("ours", ours), ("torch", lambda i: torch_step(torch_batches[i]))):
      start_faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
      loss = function(index)
      elapsed = time.perf_counter() - start
      step_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults
      if index == 0:
        first[kind] = elapsed
        common.log(f"[{name}] {kind}: first step (warm-up{', compilation' if kind == 'ours' else ''}) {elapsed:.1f} s")
      else:
        seconds[kind].append(elapsed)
        faults[kind].append(step_faults)
        losses[kind].append(loss)
  rows = float(np.median([batch["example_mask"].sum() for batch in batches[1:]]))
  figures: Dict[str, Any] = {
      "hidden": sizes["hidden"], "layers": sizes["layers"], "vocab": encoder_config.vocab_size, "batch": args.batch,
      "ours_shape": [int(batches[0][key].shape[1]) for key in ("input_ids", "span_mask", "pair_mask")],
      "torch_shapes": [[int(b[key].shape[1]) for key in ("input_ids", "span_mask", "pair_mask")]
                       for b in torch_batches[1:]],
      "param_count": int(sum(np.size(leaf) for leaf in jax.tree.leaves(holder["state"].params))),
      "torch_param_count": int(sum(p.numel() for p in torch_model.parameters())),
      "compile_s": first["ours"], "torch_first_step_s": first["torch"],
      "ours_step_s": common.median(seconds["ours"]), "torch_step_s": common.median(seconds["torch"]),
      "ours_step_s_all": seconds["ours"], "torch_step_s_all": seconds["torch"],
      "ours_page_faults_per_step": common.median(faults["ours"]),
      "torch_page_faults_per_step": common.median(faults["torch"]),
      "ours_page_faults_all": faults["ours"], "torch_page_faults_all": faults["torch"],
  }
  figures["ours_sentences_per_s"] = rows / figures["ours_step_s"]
  figures["torch_sentences_per_s"] = rows / figures["torch_step_s"]
  figures["ours_over_torch"] = figures["ours_sentences_per_s"] / figures["torch_sentences_per_s"]
  figures["losses_finite"] = bool(np.all(np.isfinite(losses["ours"] + losses["torch"])))
  return figures


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  memory = common.apply_host_memory(args.host_memory)  # before the first computation
  torch.set_num_threads(args.threads)
  data = common.load_dataset(args.dataset, args.data_dir, max_length=args.max_length, splits=("train",))
  if data is None:
    figures: Dict[str, Any] = common.skipped(args.dataset, args.data_dir)
  else:
    figures = {"dataset": args.dataset, "batch": args.batch, "steps": args.steps, "cpu_model": common.cpu_model(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average": list(os.getloadavg()), "host_memory": memory,
               "configs": {name: run_config(name, data, args) for name in args.configs}}
    if not args.json:
      for name, values in figures["configs"].items():
        print(f"== {name} ({figures['cpu_model']}, {figures['cpu_count']} cores, torch threads "
              f"{figures['torch_threads']})")
        common.emit(values, as_json=False)
  if args.json:
    common.emit(figures, as_json=True)
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
