"""Memory plan of the full D2E2S training step, compiled ahead of time from shapes alone.

Nothing is allocated: the train state is `jax.eval_shape`d, state and batch become
`jax.ShapeDtypeStruct`s carrying their shardings, and the real `trainer.make_train_step`
(donated state, explicit in/out shardings) is lowered and compiled for fake CPU devices.
XLA's `compiled.memory_analysis()` then gives, per device, the bytes of the arguments,
outputs, temporaries and of the outputs aliased to donated arguments; the peak estimate
is argument + output + temp - alias.

The default model is deberta-v2-xxlarge (vocab 128100, width 1536, 48 layers, 24 heads,
FFN 6144, 256 position buckets, shared-key p2c|c2p relative attention, conv kernel 3)
with the guide's head (hidden_dim 768, 8 attention heads), a batch of 16 sentences
padded to T = 128 sub-tokens. S, P, E are what the data pipeline pads a T = 128 batch of
14res's training split to (neg_entity_count = neg_triple_count = 50): S = 64 spans,
P = 64 pairs, E = 640 graph edges (measured with `batching.plan_dataset`; a sentence of
at most 128 pieces never needs more; flags override them).

Variants (`--variants`, comma-separated; default all):
* `adamw_1dev`, `adamw_fsdp8`, `adamw_data2_fsdp4`: the guide's AdamW, float32
  everything, on one device, `fsdp:8`, `data:2,fsdp:4`; `adamw_*_remat_*` the same with
  the encoder's layers rematerialised.
* `lean_*` (one device, float32 master weights kept): rematerialised encoder layers,
  bfloat16 compute, a leaner optimizer state (see `LEAN_VARIANTS`); `*_sliced` apply
  the optimizer in place slice by slice (`optim.make_update_fn`).

Scheduler (`--scheduler`, set through XLA_FLAGS before jax starts): `memory` (default)
is XLA's memory-minimising list scheduler; `concurrency` is the CPU compiler's default,
which orders for parallelism and, for instance, allocates the encoder's gradient
accumulators (6 GiB) during the forward pass. An accelerator compiler schedules under
its device's memory limit, so `memory` is the closer model; both are reported.

Caveats: these are the CPU backend's buffer assignments. A GPU/TPU compilation fuses
differently (and the TPU one rematerialises on its own when short of memory), so treat
the figures as an estimate to within some 10-20%, not a guarantee. Gradient bytes are
reported as one copy of the parameters in float32 with the parameters' sharding; XLA
may keep them live in pieces (they are part of `temp`).

Measured 2026-11-28 (jax 0.10.2 CPU, 8 fake devices; 1,736,873,182 parameters of
which the head holds 172M; GiB per device, peak = arg + out + temp - alias):

  variant                                    memory  concurrency  goal
  adamw_1dev_remat_full                       27.80        32.41    38 met
  adamw_1dev_remat_full_sliced                28.56        29.31
  adamw_fsdp8_remat_full                       3.76         4.39     7 met
  adamw_data2_fsdp4                           12.27        13.33
  lean_full_bf16_factored_nomomentum          16.51        25.93
  lean_full_bf16_factored_nomomentum_sliced   13.72        16.30    15 met (memory)
  lean_full_bf16_factored_bf16m_sliced        17.13        19.62
  lean_full_bf16_adamw_bf16moments_sliced     20.36        22.86

The lean variant's arrays: parameters 6.47 (float32 master weights), gradients 6.47
(float32), optimizer state 0.01; the remaining 0.77 is activations and one slice of the
update. With the optimizer over whole leaves (`_sliced` absent) the update's
temporaries, up to a leaf each (a stacked FFN kernel is 1.65 GiB), come on top.

History: the finite guard as `jnp.where(finite, new, old)` over the whole state made
XLA keep the new state beside the old one (adamw_1dev 54.09, adamw_1dev_remat_full
45.31 with the concurrency scheduler); `lax.cond` took that to 32.41. The head's large
arrays split over fsdp (`sharding.fsdp_fallback`) took adamw_fsdp8_remat_full from 6.82
to 4.56 (concurrency). optax's factored rule left attention kernels [d, heads, head_dim]
unfactored (1.7 GiB of state); `optim.factored_view` factors them. Compiles take 20-40
s each on an idle two-core machine (1.5-8 minutes under load).

  python benchmarks/memory_plan.py                       # xxlarge, every variant
  python benchmarks/memory_plan.py --layers 2 --vocab 1000 --hidden 64 --heads 2 \\
      --ffn 128 --head_hidden 32 --batch 8 --length 16 --variants adamw_fsdp8 --json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

# XLA's CPU scheduler: "memory" (the list scheduler that minimises live bytes) or
# "concurrency" (the CPU default: orders for parallelism, e.g. allocates the encoder's
# gradient accumulators during the forward pass). See the module docstring.
SCHEDULER_FLAGS = {"memory": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
                   "concurrency": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}


def _scheduler_from_argv(argv: List[str]) -> str:
  for index, arg in enumerate(argv):
    if arg.startswith("--scheduler="):
      return arg.split("=", 1)[1]
    if arg == "--scheduler" and index + 1 < len(argv):
      return argv[index + 1]
  return "memory"


def scheduler_in_effect() -> str:
  """The scheduler XLA_FLAGS selects ("concurrency" when unset: XLA's CPU default)."""
  flags = os.environ.get("XLA_FLAGS", "")
  return "memory" if SCHEDULER_FLAGS["memory"] in flags else "concurrency"


# Fake devices and the scheduler must be set before jax is imported (anywhere).
if __name__ == "__main__" or "jax" not in sys.modules:
  common.force_host_devices(8)
  _scheduler = SCHEDULER_FLAGS.get(_scheduler_from_argv(sys.argv[1:]) if __name__ == "__main__" else "memory")
  if _scheduler:
    os.environ["XLA_FLAGS"] = " ".join(
        [flag for flag in os.environ["XLA_FLAGS"].split()
         if not flag.startswith("--xla_cpu_enable_concurrency_optimized_scheduler")] + [_scheduler])

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from d2e2s_jax.models import d2e2s, losses  # pylint: disable=wrong-import-position
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config  # pylint: disable=wrong-import-position
from d2e2s_jax.training import optim, sharding, trainer  # pylint: disable=wrong-import-position
from d2e2s_jax.training.config import TrainConfig  # pylint: disable=wrong-import-position

GIB = 2**30

# name -> (mesh, remat_policy, compute_dtype, optimizer overrides).
BASE_VARIANTS: Dict[str, Tuple[str, str, str, Dict[str, Any]]] = {
    "adamw_1dev": ("data:1", "none", "float32", {}),
    "adamw_fsdp8": ("fsdp:8", "none", "float32", {}),
    "adamw_data2_fsdp4": ("data:2,fsdp:4", "none", "float32", {}),
    # The same AdamW state with the encoder's layers rematerialised (float32 throughout).
    "adamw_1dev_remat_full": ("data:1", "full", "float32", {}),
    "adamw_1dev_remat_dots": ("data:1", "dots", "float32", {}),
    "adamw_fsdp8_remat_full": ("fsdp:8", "full", "float32", {}),
    # The same AdamW arithmetic applied in place, one layer / row block at a time.
    "adamw_1dev_remat_full_sliced": ("data:1", "full", "float32", {"update": "sliced"}),
}
LEAN_VARIANTS: Dict[str, Tuple[str, str, str, Dict[str, Any]]] = {
    # AdamW's full state, only activations made lean.
    "lean_full_bf16_adamw": ("data:1", "full", "bfloat16", {}),
    # Both moments stored in bfloat16.
    "lean_full_bf16_adamw_bf16moments": ("data:1", "full", "bfloat16", {"moment_dtype": "bfloat16"}),
    # Factored second moment, float32 first moment.
    "lean_full_bf16_factored": ("data:1", "full", "bfloat16", {"second_moment": "factored"}),
    # Factored second moment, bfloat16 first moment.
    "lean_full_bf16_factored_bf16m": ("data:1", "full", "bfloat16",
                                      {"second_moment": "factored", "moment_dtype": "bfloat16"}),
    # Same with dots saved instead of full recomputation.
    "lean_dots_bf16_factored_bf16m": ("data:1", "dots", "bfloat16",
                                      {"second_moment": "factored", "moment_dtype": "bfloat16"}),
    # Adafactor-like: factored second moment and no first moment at all (b1 = 0).
    "lean_full_bf16_factored_nomomentum": ("data:1", "full", "bfloat16", {"second_moment": "factored", "first_moment": False}),
    # Same without gradient clipping: how much of the update's temp the clipped copy costs.
    "lean_full_bf16_factored_nomomentum_noclip": ("data:1", "full", "bfloat16",
                                                  {"second_moment": "factored", "first_moment": False, "max_grad_norm": 0.0}),
    # The sliced update (optim.make_update_fn): the optimizer's temporaries one slice big.
    "lean_full_bf16_adamw_bf16moments_sliced": ("data:1", "full", "bfloat16",
                                                {"moment_dtype": "bfloat16", "update": "sliced"}),
    "lean_full_bf16_factored_bf16m_sliced": ("data:1", "full", "bfloat16",
                                             {"second_moment": "factored", "moment_dtype": "bfloat16",
                                              "update": "sliced"}),
    "lean_full_bf16_factored_nomomentum_sliced": ("data:1", "full", "bfloat16",
                                                  {"second_moment": "factored", "first_moment": False, "update": "sliced"}),
}
VARIANTS = {**BASE_VARIANTS, **LEAN_VARIANTS}
GOALS_GIB = {"adamw_fsdp8": 7.0, "adamw_fsdp8_remat_full": 7.0, "adamw_1dev": 38.0, "adamw_1dev_remat_full": 38.0,
             "adamw_1dev_remat_dots": 38.0, "adamw_1dev_remat_full_sliced": 38.0, "lean": 15.0}


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--layers", type=int, default=48)
  parser.add_argument("--vocab", type=int, default=128100)
  parser.add_argument("--hidden", type=int, default=1536)
  parser.add_argument("--heads", type=int, default=24)
  parser.add_argument("--ffn", type=int, default=6144)
  parser.add_argument("--position_buckets", type=int, default=256)
  parser.add_argument("--head_hidden", type=int, default=768, help="D2E2S hidden_dim (half the width)")
  parser.add_argument("--head_attention_heads", type=int, default=8)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128, help="T, padded sub-tokens")
  parser.add_argument("--spans", type=int, default=64, help="S, padded span candidates")
  parser.add_argument("--pairs", type=int, default=64, help="P, padded pairs")
  parser.add_argument("--edges", type=int, default=640, help="E, padded graph edges")
  parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
  parser.add_argument("--split_gradients", action="store_true",
                      help="also compile loss + gradients alone: its temp is the activations' share")
  parser.add_argument("--scheduler", choices=sorted(SCHEDULER_FLAGS), default="memory",
                      help="XLA CPU scheduler (set before jax starts; see the module docstring)")
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown or not args.variants:
    parser.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
  if min(args.layers, args.batch, args.spans, args.pairs, args.edges) < 1 or args.length < 3:
    parser.error("--layers, --batch, --spans, --pairs, --edges must be >= 1 and --length >= 3")
  if 2 * args.head_hidden != args.hidden:
    parser.error("--head_hidden must be half of --hidden (the model's constraint)")
  return args


def encoder_config(args: argparse.Namespace) -> DebertaV2Config:
  return DebertaV2Config(
      vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, intermediate_size=args.ffn, hidden_act="gelu",
      max_position_embeddings=512, relative_attention=True, position_buckets=args.position_buckets,
      max_relative_positions=-1, pos_att_type=("p2c", "c2p"), share_att_key=True, norm_rel_ebd="layer_norm",
      position_biased_input=False, conv_kernel_size=3, conv_act="gelu", layer_norm_eps=1e-7, type_vocab_size=0,
      pad_token_id=0)


def batch_spec(args: argparse.Namespace) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
  """Shapes and dtypes of a training batch (WORKSPACE.md's contract)."""
  b, t, s, p, e = args.batch, args.length, args.spans, args.pairs, args.edges
  return {
      "input_ids": ((b, t), jnp.int32), "attention_mask": ((b, t), jnp.int32),
      "span_token_bounds": ((b, s, 2), jnp.int32), "span_word_bounds": ((b, s, 2), jnp.int32),
      "span_sizes": ((b, s), jnp.int32), "span_mask": ((b, s), jnp.bool_), "span_labels": ((b, s), jnp.int32),
      "pair_indices": ((b, p, 2), jnp.int32), "pair_mask": ((b, p), jnp.bool_),
      "pair_labels": ((b, p, 4), jnp.float32), "graph_senders": ((b, e), jnp.int32),
      "graph_receivers": ((b, e), jnp.int32), "graph_edge_mask": ((b, e), jnp.bool_),
      "example_index": ((b,), jnp.int32), "example_mask": ((b,), jnp.bool_),
  }


def abstract_train_state(model, optimizer, batch: Dict[str, jax.ShapeDtypeStruct], seed: int = 0):
  """`jax.eval_shape` of the trainer's initial TrainState (boxed, for the logical shardings)."""

  def init(rng, init_batch):
    params_rng, dropout_rng = jax.random.split(rng)
    params = model.init({"params": params_rng, "dropout": dropout_rng}, init_batch, deterministic=True)["params"]
    return trainer.TrainState(
        step=jnp.zeros([], jnp.int32), params=params, opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
        consecutive_skips=jnp.zeros([], jnp.int32), max_consecutive_skips=jnp.zeros([], jnp.int32),
        total_skips=jnp.zeros([], jnp.int32))

  return jax.eval_shape(init, jax.random.key(seed), batch)


def shard_bytes(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of the arrays of `tree` under `shardings` (the largest shard)."""
  leaves = jax.tree.leaves(tree)
  sharding_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  return sum(math.prod(s.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
             for leaf, s in zip(leaves, sharding_leaves))


def gradient_memory(model, model_config, abstract_state, abstract_batch, state_shardings) -> Dict[str, float]:
  """Memory of the loss and gradients alone (no optimizer), to split the step's temp.

  The gradients are the output here (laid out like the parameters), so `temp` is what
  the forward and backward passes need besides them: activations kept for the
  backward pass, rematerialised values, gathered weights.
  """
  def gradients(params, rng_data, batch):
    def loss_fn(p):
      outputs = model.apply({"params": p}, batch, deterministic=False,
                            rngs={"dropout": jax.random.wrap_key_data(rng_data)})
      return losses.d2e2s_loss(outputs, batch, model_config.kl_weight)[0]
    return jax.grad(loss_fn)(params)

  compiled = jax.jit(gradients, out_shardings=state_shardings.params).lower(
      abstract_state.params, abstract_state.rng, abstract_batch).compile()
  memory = compiled.memory_analysis()
  return {"grads_only_argument_gib": memory.argument_size_in_bytes / GIB,
          "grads_only_output_gib": memory.output_size_in_bytes / GIB,
          "grads_only_temp_gib": memory.temp_size_in_bytes / GIB}


def plan_variant(args: argparse.Namespace, name: str) -> Dict[str, float]:
  """Compiles the training step of one variant and returns its per-device memory figures."""
  mesh_spec, remat, compute_dtype, optimizer_overrides = VARIANTS[name]
  # A from-scratch encoder of the benchmark's sizes (`encoder_config`; checked by the settings).
  config = TrainConfig(encoder="scratch", scratch_hidden_size=args.hidden, scratch_heads=args.heads,
                       scratch_layers=args.layers, scratch_intermediate_size=args.ffn,
                       remat_policy=remat, compute_dtype=compute_dtype, hidden_dim=args.head_hidden, attention_heads=args.head_attention_heads, mesh=mesh_spec,
                       batch_size=args.batch,
                       **{k: v for k, v in optimizer_overrides.items() if k in ("moment_dtype", "second_moment")})
  model_config = config.model_config(encoder_config(args))
  model = d2e2s.D2E2S(model_config)
  optimizer_config = optim.OptimizerConfig(**{**vars(config.optimizer_config()), **optimizer_overrides})
  total_steps = 1000
  optimizer = optim.make_optimizer(optimizer_config, total_steps)
  schedule = optim.learning_rate_schedule(optimizer_config, total_steps)
  mesh = sharding.make_mesh(mesh_spec)

  start = time.perf_counter()
  plain_batch = {key: jax.ShapeDtypeStruct(shape, dtype) for key, (shape, dtype) in batch_spec(args).items()}
  boxed_state = abstract_train_state(model, optimizer, plain_batch)
  state_shardings = sharding.logical_shardings(boxed_state, mesh)
  abstract_state = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                                nn.meta.unbox(boxed_state), state_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  abstract_batch = {key: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=batch_sharding)
                    for key, leaf in plain_batch.items()}
  step = trainer.make_train_step(model, optimizer, schedule, model_config, 1, mesh, state_shardings,
                                 optim.make_update_fn(optimizer_config, total_steps, optimizer),
                                 hyper=trainer.runtime_hyperparameters(optimizer_config, model_config, total_steps))
  lowered = step.lower(abstract_state, abstract_batch)
  lower_s = time.perf_counter() - start
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start - lower_s
  memory = compiled.memory_analysis()

  params = abstract_state.params
  gradient_figures = {}
  if args.split_gradients:
    gradient_figures = gradient_memory(model, model_config, abstract_state, abstract_batch, state_shardings)
  figures = {
      "mesh": mesh_spec, "remat_policy": remat, "compute_dtype": compute_dtype,
      "optimizer": optimizer_config.second_moment + (f", moments {optimizer_config.moment_dtype}"
                                                     if optimizer_config.moment_dtype else "")
                   + (", no first moment" if not optimizer_config.first_moment else "")
                   + f", {optimizer_config.update} update",
      "argument_gib": memory.argument_size_in_bytes / GIB,
      "output_gib": memory.output_size_in_bytes / GIB,
      "temp_gib": memory.temp_size_in_bytes / GIB,
      "alias_gib": memory.alias_size_in_bytes / GIB,
      "generated_code_gib": memory.generated_code_size_in_bytes / GIB,
      "peak_gib": (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                   - memory.alias_size_in_bytes) / GIB,
      "params_gib": shard_bytes(params, state_shardings.params) / GIB,
      "encoder_params_gib": shard_bytes(params["encoder"], state_shardings.params["encoder"]) / GIB,
      "head_params_gib": shard_bytes(params["head"], state_shardings.params["head"]) / GIB,
      "word_embeddings_gib": shard_bytes(params["encoder"]["embeddings"],
                                         state_shardings.params["encoder"]["embeddings"]) / GIB,
      "opt_state_gib": shard_bytes(abstract_state.opt_state, state_shardings.opt_state) / GIB,
      # Gradients: float32, laid out like the parameters (see the module docstring).
      "grads_gib": shard_bytes(params, state_shardings.params) / GIB,
      "batch_mib": shard_bytes(abstract_batch, {k: batch_sharding for k in abstract_batch}) / 2**20,
      "lower_s": lower_s,
      "compile_s": compile_s,
  }
  figures.update(gradient_figures)
  # What XLA's temp holds beyond one gradient copy: activations, remat buffers, gathers.
  figures["temp_minus_grads_gib"] = figures["temp_gib"] - figures["grads_gib"]
  goal = GOALS_GIB.get(name, GOALS_GIB["lean"] if name.startswith("lean") else None)
  if goal is not None:
    figures["goal_gib"] = goal
    figures["fits_goal"] = figures["peak_gib"] <= goal
  figures["param_count"] = int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
  return figures


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  if len(jax.devices()) < 8:
    raise SystemExit(f"need 8 (fake) devices, found {len(jax.devices())}: set XLA_FLAGS="
                     "--xla_force_host_platform_device_count=8 before jax is imported")
  if args.scheduler != scheduler_in_effect():
    common.log(f"warning: --scheduler={args.scheduler} but XLA_FLAGS (fixed when jax started) select the "
               f"{scheduler_in_effect()} scheduler; the figures are for the latter")
  results: Dict[str, Any] = {}
  for name in args.variants:
    common.log(f"compiling {name} ...")
    results[name] = plan_variant(args, name)
    row = results[name]
    common.log(f"  {name}: peak {row['peak_gib']:.2f} GiB = arg {row['argument_gib']:.2f} + out "
               f"{row['output_gib']:.2f} + temp {row['temp_gib']:.2f} - alias {row['alias_gib']:.2f} "
               f"(compile {row['compile_s']:.0f} s)")
  first = results[args.variants[0]]
  figures = {
      "scheduler": scheduler_in_effect(),
      "layers": args.layers, "vocab": args.vocab, "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn,
      "batch": args.batch, "length": args.length, "spans": args.spans, "pairs": args.pairs, "edges": args.edges,
      "param_count": first["param_count"], "devices": len(jax.devices()), "variants": results,
  }
  if not args.json:
    print(f"D2E2S training step, {args.layers} layers, width {args.hidden}, vocab {args.vocab}, "
          f"{first['param_count'] / 1e6:.1f}M parameters; batch {args.batch} x T {args.length} "
          f"(S {args.spans}, P {args.pairs}, E {args.edges}); {scheduler_in_effect()} scheduler; GiB per device")
    columns = ("peak_gib", "argument_gib", "output_gib", "temp_gib", "alias_gib", "params_gib", "opt_state_gib",
               "grads_gib", "temp_minus_grads_gib", "compile_s")
    print(f"{'variant':36s} " + " ".join(f"{c.replace('_gib', ''):>10s}" for c in columns) + "  goal")
    for name, row in results.items():
      goal = (f"<= {row['goal_gib']:.0f}: {'yes' if row['fits_goal'] else 'NO'}" if "goal_gib" in row else "")
      print(f"{name:36s} " + " ".join(f"{row[c]:10.2f}" for c in columns) + f"  {goal}")
  common.emit(figures, as_json=True) if args.json else None
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
