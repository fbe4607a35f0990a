"""Time and memory of the optimizer update alone: `whole` (optax chain) vs `sliced` (in place).

`optim.make_update_fn` applies the same arithmetic either over whole leaves or one slice
at a time inside `fori_loop`s (the memory-lean mode). This benchmark builds a parameter
tree shaped like a DeBERTa-v2 encoder (a word embedding, a scanned stack of `--layers`
layers with [d, heads, head_dim] attention kernels and d x FFN matrices, LayerNorms),
random gradients and the optimizer's state, and for each optimizer (`--optimizers`:
`adamw`, the guide's AdamW; `lean`, factored second moment without first moment) jits
both update functions with the state donated, then reports:

* seconds per update, `whole` and `sliced` timed interleaved (`common.interleaved`),
  medians, and their ratio (`sliced_over_whole`: what the lean mode's update costs);
* XLA's temporary bytes of each compiled update (`memory_analysis().temp_size_in_bytes`)
  beside the parameter bytes (`temp_over_params`).

The default sizes are deberta-v3-base-like (12 layers, width 768, FFN 3072, vocab
128100), which a CPU updates in a fraction of a second; `--layers 48 --hidden 1536
--ffn 6144` is xxlarge. Shared machine: compare ratios from one run.

  python benchmarks/optimizer_update.py
  python benchmarks/optimizer_update.py --layers 2 --hidden 256 --ffn 512 --vocab 3000 --repeats 3 --json
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from d2e2s_jax.training import optim  # pylint: disable=wrong-import-position

OPTIMIZERS = {
    "adamw": {},
    "lean": {"second_moment": "factored", "first_moment": False},
}


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--hidden", type=int, default=768)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--ffn", type=int, default=3072)
  parser.add_argument("--vocab", type=int, default=128100)
  parser.add_argument("--optimizers", default="adamw,lean", help=f"comma-separated subset of {list(OPTIMIZERS)}")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  args.optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
  unknown = sorted(set(args.optimizers) - set(OPTIMIZERS))
  if unknown or not args.optimizers:
    parser.error(f"unknown --optimizers {unknown}; choose from {list(OPTIMIZERS)}")
  if min(args.layers, args.hidden, args.heads, args.ffn, args.vocab, args.repeats) < 1:
    parser.error("sizes and --repeats must be positive")
  if args.hidden % args.heads:
    parser.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
  return args


def encoder_like_params(args: argparse.Namespace) -> Dict[str, Any]:
  """Random float32 arrays with the shapes (and names, for the decay mask) of an encoder."""
  rng = np.random.default_rng(0)
  d, h, f, n = args.hidden, args.heads, args.ffn, args.layers
  shapes = {
      "word_embeddings": {"embedding": (args.vocab, d)},
      "layer": {
          "query": {"kernel": (n, d, h, d // h), "bias": (n, h, d // h)},
          "key": {"kernel": (n, d, h, d // h), "bias": (n, h, d // h)},
          "value": {"kernel": (n, d, h, d // h), "bias": (n, h, d // h)},
          "attention_output": {"kernel": (n, h, d // h, d), "bias": (n, d)},
          "intermediate": {"kernel": (n, d, f), "bias": (n, f)},
          "output": {"kernel": (n, f, d), "bias": (n, d)},
          "LayerNorm": {"scale": (n, d), "bias": (n, d)},
      },
  }
  return jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape).astype(np.float32) * 0.02), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def run_optimizer(args: argparse.Namespace, name: str, params: Dict[str, Any], grads: Dict[str, Any]):
  figures: Dict[str, Any] = {}
  param_bytes = sum(leaf.size * 4 for leaf in jax.tree.leaves(params))
  updates, states = {}, {}
  for update in ("whole", "sliced"):
    config = optim.OptimizerConfig(**{"learning_rate": 1e-3, "warmup_fraction": 0.0, "update": update,
                                      **OPTIMIZERS[name]})
    chain = optim.make_optimizer(config, 1000)
    update_fn = optim.make_update_fn(config, 1000, chain)
    # Donated parameters before the state, as outputs come: jax pairs donated inputs with
    # outputs of the same shape in order, so (state, params) would alias the new
    # parameters to the old first moment (and so on round), and XLA would copy every
    # large leaf three times before and after the update.
    function = jax.jit(lambda grads, own_params, state, finite: update_fn(grads, state, own_params, finite),
                       donate_argnums=(1, 2))
    state = chain.init(params)
    own_params = jax.tree.map(jnp.copy, params)
    compiled = function.lower(grads, own_params, state, jnp.asarray(True)).compile()
    figures[f"{update}_temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    figures[f"{update}_temp_over_params"] = compiled.memory_analysis().temp_size_in_bytes / param_bytes
    updates[update], states[update] = compiled, [own_params, state]

  def step(update):
    def run():
      holder = states[update]
      holder[0], holder[1] = updates[update](grads, holder[0], holder[1], jnp.asarray(True))
      jax.block_until_ready(holder[0])
    return run

  for update in updates:  # warm-up (first-call overheads)
    step(update)()
  seconds = common.interleaved({update: step(update) for update in updates}, args.repeats)
  for update, values in seconds.items():
    figures[f"{update}_s"] = common.median(values)
  figures["sliced_over_whole"] = figures["sliced_s"] / figures["whole_s"]
  figures["param_mib"] = param_bytes / 2**20
  return figures


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  params = encoder_like_params(args)
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params)
  results = {}
  for name in args.optimizers:
    common.log(f"{name} ...")
    results[name] = run_optimizer(args, name, params, grads)
  figures = {"layers": args.layers, "hidden": args.hidden, "ffn": args.ffn, "vocab": args.vocab,
             "param_count": int(sum(leaf.size for leaf in jax.tree.leaves(params))), "optimizers": results}
  if args.json:
    common.emit(figures, as_json=True)
  else:
    print(f"optimizer update, {figures['param_count'] / 1e6:.1f}M parameters; medians of {args.repeats}")
    for name, row in results.items():
      print(f"{name:6s} whole {row['whole_s'] * 1e3:8.1f} ms  sliced {row['sliced_s'] * 1e3:8.1f} ms  "
            f"sliced/whole {row['sliced_over_whole']:.2f}  temp MiB whole {row['whole_temp_mib']:.0f} "
            f"sliced {row['sliced_temp_mib']:.0f} (params {row['param_mib']:.0f})")
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
