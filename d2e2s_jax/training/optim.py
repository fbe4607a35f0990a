"""The optimizer of D2E2S training: AdamW, masked weight decay, warmup + linear decay, clipping.

Matches the released training code (SpERT-style): `transformers.AdamW(...,
correct_bias=False)` whose weight decay skips biases and LayerNorm parameters, a learning
rate that rises linearly from 0 over `warmup_fraction` of the total steps and then falls
linearly to 0 at the last step (`transformers.get_linear_schedule_with_warmup`), and
global-norm gradient clipping. Optional gradient accumulation wraps the whole chain in
`optax.MultiSteps`.

Deliberate differences from the released optimizer:
* Bias correction is off by default, as released (`correct_bias=False`: the first
  updates are larger than Adam's, by (1 - b1^t) / sqrt(1 - b2^t)); `bias_correction=True`
  gives textbook AdamW.
* Decoupled weight decay is computed from the parameter before this step's Adam update
  (optax); transformers' AdamW decays the already-updated parameter. The two differ by
  lr^2 * weight_decay * update, below 1e-10 at the guide's settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hyper-parameters of the optimizer.

  Attributes:
    learning_rate: peak learning rate.
    warmup_fraction: fraction of the total steps spent in linear warmup (`lr_warmup`).
    weight_decay: AdamW decoupled weight decay, not applied to biases and norms.
    max_grad_norm: global-norm clipping threshold; <= 0 disables clipping.
    b1, b2, eps: Adam's decay rates and epsilon (transformers' AdamW defaults, used by
      the released code).
    bias_correction: divide the moments by (1 - b^t) as in Adam; False as released.
    gradient_accumulation_steps: >1 accumulates gradients over that many micro-steps.
    moment_dtype: storage dtype of Adam's moments (None keeps float32). bfloat16 halves
      the optimizer state; each stored moment is rounded to 8 mantissa bits per step
      (computation stays float32).
    second_moment: "full" (Adam) or "factored" (`scale_by_factored_adam`: row/column
      second moments, a memory-lean approximation of Adam).
  """

  learning_rate: float = 5e-6
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  max_grad_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  bias_correction: bool = False
  gradient_accumulation_steps: int = 1
  moment_dtype: Optional[str] = None
  second_moment: str = "full"

  def __post_init__(self):
    if self.second_moment not in ("full", "factored"):
      raise ValueError(f"second_moment must be 'full' or 'factored', got {self.second_moment!r}")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then linear decay to 0 at `total_steps`.

  `total_steps` counts optimizer updates (after gradient accumulation).
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  warmup_steps = int(config.warmup_fraction * total_steps)
  peak = config.learning_rate

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    decay = peak * jnp.maximum(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))
    return jnp.where(step < warmup_steps, warm, decay)

  return schedule


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: everything but biases and norm scales.

  The released code excludes parameters whose name contains `bias` or
  `LayerNorm.weight`; in Flax a LayerNorm's weight is its `scale` and the LSTM's biases
  are named `bias`, so the rule is on the leaf name.
  """

  def wants_decay(path, _):
    # The last dict key is the parameter's name; logically partitioned (boxed) trees add
    # an attribute entry after it.
    names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    name = str(names[-1]) if names else ""
    return not ("bias" in name or name == "scale")

  return jax.tree_util.tree_map_with_path(wants_decay, params)


class _AdamState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def scale_by_adam(b1: float, b2: float, eps: float, bias_correction: bool,
                  moment_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """Adam's direction m / (sqrt(v) + eps), with or without bias correction.

  Both moments are stored in `moment_dtype` (default: the parameter's dtype) and
  computed in float32.
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=moment_dtype or p.dtype)
    return _AdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
                      nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    f32 = lambda x: x.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: b1 * f32(m) + (1 - b1) * f32(g), state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * f32(v) + (1 - b2) * jnp.square(f32(g)), state.nu, updates)
    if bias_correction:
      mu_hat = jax.tree.map(lambda m: m / (1 - b1**count), mu)
      nu_hat = jax.tree.map(lambda v: v / (1 - b2**count), nu)
    else:
      mu_hat, nu_hat = mu, nu
    direction = jax.tree.map(lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu_hat, nu_hat, updates)
    store = lambda new, old: new.astype(old.dtype)
    return direction, _AdamState(count=count, mu=jax.tree.map(store, mu, state.mu),
                                 nu=jax.tree.map(store, nu, state.nu))

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_factored_adam(b1: float, b2: float, eps: float,
                           moment_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """A lean variant: Adafactor's factored second moment, then an EMA of the update.

  The second moment of a matrix is kept as row and column means (O(n + m) instead of
  O(n * m)); vectors keep a full second moment. The update is normalised by it first and
  then averaged with decay `b1` (Adafactor's order; Adam averages the gradient first).
  With `b1 = 0` there is no first moment at all.
  """
  parts = [optax.scale_by_factored_rms(decay_rate=b2, epsilon=eps**2)]
  if b1 > 0:
    parts.append(optax.ema(b1, debias=False, accumulator_dtype=moment_dtype))
  return optax.chain(*parts)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """The full optimizer chain; `total_steps` counts optimizer updates."""
  schedule = learning_rate_schedule(config, total_steps)
  chain = []
  if config.max_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(config.max_grad_norm))
  moment_dtype = jnp.dtype(config.moment_dtype) if config.moment_dtype else None
  if config.second_moment == "factored":
    direction = scale_by_factored_adam(config.b1, config.b2, config.eps, moment_dtype)
  else:
    direction = scale_by_adam(config.b1, config.b2, config.eps, config.bias_correction, moment_dtype)
  chain += [
      direction,
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(schedule),
  ]
  optimizer = optax.chain(*chain)
  if config.gradient_accumulation_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=config.gradient_accumulation_steps)
  return optimizer
