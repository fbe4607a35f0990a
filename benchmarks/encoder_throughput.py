"""Encoder throughput: our Flax DeBERTa-v2 against `transformers`' PyTorch model, same CPU.

Measures tokens per second of the forward pass and of forward + backward (gradient of a
scalar function of the last hidden state w.r.t. every parameter) for the same
deberta-v3-base-like configuration (hidden 768, 12 layers, 12 heads, FFN 3072, vocab
128100, 256 log-buckets, shared-key c2p|p2c relative attention, LayerNorm on the
relative embeddings) on a batch of 8 x 64 tokens. Both models get the same random
weights (ours converted from PyTorch's state dict). The four measurements are
interleaved repetition by repetition, so a slow phase of a shared machine hits all of
them alike; the figures are medians.

  python benchmarks/encoder_throughput.py --repeats 5 --layers 12
  python benchmarks/encoder_throughput.py --repeats 3 --layers 2 --json   # quick

`--json` prints one JSON object with the figures as the last line of output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  if args.repeats < 1 or args.layers < 1 or args.batch < 1 or args.length < 2:
    parser.error("--repeats, --layers, --batch must be >= 1 and --length >= 2")
  return args


def timed(function: Callable[[], None]) -> float:
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def main(argv: List[str]) -> Dict[str, float]:
  args = parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  config = deberta_v2.DebertaV2Config(**{**BASE_CONFIG, "num_hidden_layers": args.layers})
  torch.manual_seed(0)
  hf_config = config.to_transformers()
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch_model = transformers.DebertaV2Model(hf_config).eval()  # eval: dropout off in both
  params = jax.tree_util.tree_map(jnp.asarray, deberta_v2_convert.hf_to_flax(torch_model.state_dict(), config))
  model = deberta_v2.DebertaV2Model(config, dtype=jnp.dtype(args.dtype))

  rng = np.random.RandomState(0)
  ids = rng.randint(5, config.vocab_size, (args.batch, args.length)).astype(np.int32)
  mask = np.ones_like(ids)
  weights = rng.normal(size=(args.batch, args.length, config.hidden_size)).astype(np.float32)
  ids_torch, mask_torch, weights_torch = (torch.tensor(x) for x in (ids, mask, weights))
  ids_jax, mask_jax, weights_jax = (jnp.asarray(x) for x in (ids, mask, weights))

  forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
  loss_and_grads = jax.jit(jax.value_and_grad(
      lambda p, i, m, w: jnp.sum(model.apply({"params": p}, i, m).astype(jnp.float32) * w)))

  def ours_forward():
    forward(params, ids_jax, mask_jax).block_until_ready()

  def ours_forward_backward():
    jax.block_until_ready(loss_and_grads(params, ids_jax, mask_jax, weights_jax))

  def torch_forward():
    with torch.inference_mode():
      torch_model(ids_torch, mask_torch)

  def torch_forward_backward():
    torch_model.zero_grad(set_to_none=True)
    (torch_model(ids_torch, mask_torch).last_hidden_state * weights_torch).sum().backward()

  runs = {"ours_forward": ours_forward, "torch_forward": torch_forward,
          "ours_forward_backward": ours_forward_backward, "torch_forward_backward": torch_forward_backward}
  compile_seconds = timed(ours_forward) + timed(ours_forward_backward)  # first calls compile
  torch_forward(), torch_forward_backward()  # warm-up: allocator, thread pool
  times: Dict[str, List[float]] = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, function in runs.items():
      times[name].append(timed(function))

  tokens = args.batch * args.length
  figures: Dict[str, float] = {f"{name}_tokens_per_s": tokens / statistics.median(values)
                               for name, values in times.items()}
  figures["forward_ratio"] = figures["ours_forward_tokens_per_s"] / figures["torch_forward_tokens_per_s"]
  figures["forward_backward_ratio"] = (figures["ours_forward_backward_tokens_per_s"] /
                                       figures["torch_forward_backward_tokens_per_s"])
  figures["ours_compile_s"] = compile_seconds
  figures.update(layers=args.layers, batch=args.batch, length=args.length, repeats=args.repeats,
                 torch_threads=torch.get_num_threads(), cpus=os.cpu_count(), dtype=args.dtype)

  print(f"DeBERTa-v2 encoder, {args.layers} layers, batch {args.batch} x {args.length} tokens, "
        f"{args.repeats} interleaved repeats (median), {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, our dtype {args.dtype}")
  for phase in ("forward", "forward_backward"):
    print(f"  {phase:17s} ours {figures[f'ours_{phase}_tokens_per_s']:9.1f} tok/s   torch "
          f"{figures[f'torch_{phase}_tokens_per_s']:9.1f} tok/s   ratio {figures[f'{phase}_ratio']:.2f}x")
  print(f"  our compile time (forward + backward programs): {compile_seconds:.1f} s")
  if args.json:
    print(json.dumps(figures, sort_keys=True))
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
