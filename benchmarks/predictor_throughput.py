"""Prediction throughput of `inference.Predictor` on an ASTE test split, per encoder layer loop (CPU).

For one model size (`--config`: `tiny` or `base`, the sizes of `train_step.py`, random
weights: one initialisation shared by every mode, since the parameter tree does not
depend on the loop) this builds one `Predictor` per `--layer_loops` mode (the
`layer_loop` setting: "scan", "unroll") and times `Predictor.predict_examples` over the
first `--sentences` sentences of the test split (parsed D2E2S records, so no parser
runs): the first pass compiles one predict step per length bucket (`first_pass_s`), then
`--repeats` passes run interleaved mode by mode and the median gives sentences/s. The
reference of the same run is the scan mode (`unroll_over_scan_pass_s` < 1: unroll is
faster). The figures name the CPU model and the load average.

  python benchmarks/predictor_throughput.py --config tiny --repeats 3
  python benchmarks/predictor_throughput.py --config base --sentences 64 --repeats 2 --json
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

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position

from d2e2s_jax import inference  # pylint: disable=wrong-import-position
from d2e2s_jax.models import d2e2s  # pylint: disable=wrong-import-position


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--config", default="tiny", choices=sorted(train_step.CONFIGS))
  parser.add_argument("--layer_loops", default="scan,unroll", help="comma-separated subset of scan,unroll")
  parser.add_argument("--sentences", type=int, default=0, help="first N test sentences (0: all)")
  parser.add_argument("--repeats", type=int, default=3, help="timed passes per mode (after the compiling pass)")
  parser.add_argument("--batch", type=int, default=16, help="evaluation batch size")
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--dataset", default="14res")
  parser.add_argument("--data_dir", default=None, help=f"data root (default {common.DEFAULT_DATA_DIR})")
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  args.layer_loops = [mode.strip() for mode in args.layer_loops.split(",") if mode.strip()]
  if not args.layer_loops or set(args.layer_loops) - {"scan", "unroll"}:
    parser.error("--layer_loops must be a comma-separated subset of scan,unroll")
  if args.repeats < 1 or args.sentences < 0 or args.batch < 1:
    parser.error("--repeats and --batch must be >= 1, --sentences >= 0")
  return args


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  data = common.load_dataset(args.dataset, args.data_dir, max_length=args.max_length, splits=("train", "test"))
  if data is None:
    figures: Dict[str, Any] = common.skipped(args.dataset, args.data_dir)
    common.emit(figures, as_json=args.json)
    return figures
  tokenizer, examples, _ = data
  sentences = examples["test"][:args.sentences or None]
  sizes = train_step.CONFIGS[args.config]
  step_args = argparse.Namespace(batch=args.batch, max_length=args.max_length)
  base_config = train_step.run_train_config(args.config, tokenizer, step_args)
  encoder_config = dataclasses.replace(base_config.encoder_config(tokenizer),
                                       vocab_size=max(len(tokenizer), sizes["vocab"]))
  init_model = d2e2s.D2E2S(base_config.model_config(encoder_config))
  # pylint: disable-next=protected-access
  init_batch = inference._init_batch(tokenizer, base_config)
  params = jax.jit(lambda rng: d2e2s.init_params(init_model, init_batch, rng))(jax.random.key(0))
  params = jax.device_get(nn.unbox(params))

  figures: Dict[str, Any] = {"config": args.config, "dataset": args.dataset, "sentences": len(sentences),
                             "batch": args.batch, "repeats": args.repeats, "cpu_model": common.cpu_model(),
                             "cpus": os.cpu_count(), "load_average_before": list(os.getloadavg())}
  passes = {}
  for mode in args.layer_loops:
    config = dataclasses.replace(base_config, layer_loop=mode)
    predictor = inference.Predictor(config, encoder_config, tokenizer, params, source=f"random {args.config}")
    common.log(f"[{mode}] first pass (compiles each length bucket) ...")
    start = time.perf_counter()
    predictor.predict_examples(sentences)
    figures[f"{mode}_first_pass_s"] = time.perf_counter() - start
    passes[mode] = lambda predictor=predictor: predictor.predict_examples(sentences)
  seconds = common.interleaved(passes, args.repeats)
  for mode in args.layer_loops:
    figures[f"{mode}_pass_s"] = common.median(seconds[mode])
    figures[f"{mode}_sentences_per_s"] = len(sentences) / figures[f"{mode}_pass_s"]
  if {"scan", "unroll"} <= set(args.layer_loops):
    figures["unroll_over_scan_pass_s"] = figures["unroll_pass_s"] / figures["scan_pass_s"]
    figures["unroll_over_scan_first_pass_s"] = figures["unroll_first_pass_s"] / figures["scan_first_pass_s"]
  figures["load_average_after"] = list(os.getloadavg())
  common.emit(figures, as_json=args.json)
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
