"""The optimizer of D2E2S training: AdamW, masked weight decay, warmup + linear decay, clipping.

Matches the released training code (SpERT-style): `transformers.AdamW(...,
correct_bias=False)` whose weight decay skips biases and LayerNorm parameters, a learning
rate that rises linearly from 0 over `warmup_fraction` of the total steps and then falls
linearly to 0 at the last step (`transformers.get_linear_schedule_with_warmup`), and
global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`'s clamped coefficient:
`clip_coefficient`). Optional gradient accumulation wraps the whole chain in
`optax.MultiSteps`.

Two ways to apply it (`OptimizerConfig.update`), the same arithmetic (tested):
* `whole`: the optax chain (`make_optimizer`) over the whole parameter tree, then
  `optax.apply_updates`. XLA plans the update of a leaf as a few whole-leaf passes, and
  the intermediate arrays (the clipped gradient, Adam's direction, the update) can each
  be as big as the leaf: on deberta-v2-xxlarge a stacked FFN kernel is 1.7 GB in float32.
* `sliced` (`make_update_fn`): the same chain's state, updated one slice at a time -- a
  layer of the scanned encoder stack, a block of embedding rows -- inside a
  `lax.fori_loop` that writes parameters and moments in place, so every intermediate is
  one slice big (the memory-lean mode, README "Sharding and memory"). Meant for one
  device or a pure-data mesh; no gradient accumulation. Where a slice's parameter
  update reads a moment that the same iteration rewrites (Adam's first and second
  moments), XLA's CPU compiler copies that moment; the plan gains nothing for float32
  AdamW, and most for the factored second moment without a first moment.

The peak learning rate, the warmup length and the weight decay can be runtime inputs of
the jitted step instead of constants compiled into it (`OptimizerConfig.runtime_inputs`,
passed to the chain's `update` as optax extra arguments and to `UpdateFn`s as `hyper`):
the trials of a search that differ only in them then share one compiled step. Without
them, the config's values are used (as constants).

Deliberate differences from the released optimizer:
* Bias correction is off by default, as released (`correct_bias=False`: the first
  updates are larger than Adam's, by (1 - b1^t) / sqrt(1 - b2^t)); `bias_correction=True`
  gives textbook AdamW.
* Decoupled weight decay is computed from the parameter before this step's Adam update
  (optax); transformers' AdamW decays the already-updated parameter. The two differ by
  lr^2 * weight_decay * update, below 1e-10 at the guide's settings.
* No norm scale is decayed (`decay_mask`: every leaf named `bias` or `scale`). The
  released exclusion matches parameter names by substring (`bias`, `LayerNorm.weight`),
  so the LayerNorms of its fusion blocks, entries of an `nn.Sequential` named
  `...residual_layer2.3.weight`, are decayed there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from d2e2s_jax import settings


# OptimizerConfig field -> the setting it takes its value (and default, and rule) from.
SETTING_NAMES = {
    "learning_rate": "lr",
    "warmup_fraction": "lr_warmup",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "bias_correction": "bias_correction",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "moment_dtype": "moment_dtype",
    "second_moment": "second_moment",
    "first_moment": "first_moment",
    "update": "optimizer_update",
}
_DEFAULT = settings.component_defaults(SETTING_NAMES)
# The values a step can take at runtime (`OptimizerConfig.runtime_inputs`): the extra
# arguments of the chain's `update` and the keys of an `UpdateFn`'s `hyper`.
RUNTIME_INPUTS = ("learning_rate", "warmup_steps", "weight_decay")
# Adam's first-moment decay when the first moment is kept (transformers' AdamW default).
ADAM_B1 = 0.9
# What `torch.nn.utils.clip_grad_norm_`, the released clipping, adds to the norm it divides by.
CLIP_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hyper-parameters of the optimizer.

  The fields named in `SETTING_NAMES` take their defaults and rules from
  `d2e2s_jax.settings`.

  Attributes:
    learning_rate: peak learning rate.
    warmup_fraction: fraction of the total steps spent in linear warmup (`lr_warmup`).
    weight_decay: AdamW decoupled weight decay, not applied to biases and norms.
    max_grad_norm: global-norm clipping threshold; <= 0 disables clipping.
    first_moment: keep Adam's first moment (decay `b1` = `ADAM_B1`); False drops it
      (`b1` = 0, Adafactor-style), saving one parameter-sized state.
    b2, eps: Adam's second-moment decay and epsilon (transformers' AdamW defaults, used
      by the released code).
    bias_correction: divide the moments by (1 - b^t) as in Adam; False as released.
    gradient_accumulation_steps: >1 accumulates gradients over that many micro-steps.
    moment_dtype: storage dtype of Adam's moments (None keeps float32). bfloat16 halves
      the optimizer state; each stored moment is rounded to 8 mantissa bits per step
      (computation stays float32).
    second_moment: "full" (Adam) or "factored" (`scale_by_factored_adam`: row/column
      second moments, a memory-lean approximation of Adam).
    update: "whole" or "sliced" (see the module docstring).
  """

  learning_rate: float = _DEFAULT["learning_rate"]
  warmup_fraction: float = _DEFAULT["warmup_fraction"]
  weight_decay: float = _DEFAULT["weight_decay"]
  max_grad_norm: float = _DEFAULT["max_grad_norm"]
  first_moment: bool = _DEFAULT["first_moment"]
  b2: float = 0.999
  eps: float = 1e-8
  bias_correction: bool = _DEFAULT["bias_correction"]
  gradient_accumulation_steps: int = _DEFAULT["gradient_accumulation_steps"]
  moment_dtype: Optional[str] = _DEFAULT["moment_dtype"]
  second_moment: str = _DEFAULT["second_moment"]
  update: str = _DEFAULT["update"]

  def __post_init__(self):
    settings.check_fields(self, SETTING_NAMES)
    settings.check_combinations({"optimizer_update": self.update,
                                 "gradient_accumulation_steps": self.gradient_accumulation_steps})

  @property
  def b1(self) -> float:
    """Adam's first-moment decay: `ADAM_B1`, or 0 (no first moment) without `first_moment`."""
    return ADAM_B1 if self.first_moment else 0.0

  def warmup_steps(self, total_steps: int) -> int:
    """Updates spent in linear warmup out of `total_steps`."""
    return int(self.warmup_fraction * total_steps)

  def runtime_inputs(self, total_steps: int) -> Dict[str, jax.Array]:
    """This config's `RUNTIME_INPUTS` as scalars, for a step that takes them at runtime."""
    return {"learning_rate": jnp.float32(self.learning_rate),
            "warmup_steps": jnp.int32(self.warmup_steps(total_steps)),
            "weight_decay": jnp.float32(self.weight_decay)}


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> Callable[..., jax.Array]:
  """Linear warmup from 0 to the peak, then linear decay to 0 at `total_steps`.

  `total_steps` counts optimizer updates (after gradient accumulation). The schedule is
  `schedule(step, learning_rate=None, warmup_steps=None)`: the optional arguments are
  runtime values of the peak and the warmup length (`OptimizerConfig.runtime_inputs`),
  the config's otherwise; the same arithmetic either way.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")

  def schedule(step, learning_rate=None, warmup_steps=None):
    peak = config.learning_rate if learning_rate is None else learning_rate
    warmup = config.warmup_steps(total_steps) if warmup_steps is None else warmup_steps
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / jnp.maximum(warmup, 1)
    decay = peak * jnp.maximum(0.0, (total_steps - step) / jnp.maximum(total_steps - warmup, 1))
    return jnp.where(step < warmup, warm, decay)

  return schedule


def _scale_by_schedule(schedule: Callable[..., jax.Array]) -> optax.GradientTransformationExtraArgs:
  """`optax.scale_by_learning_rate(schedule)` (same state) taking the schedule's runtime values."""

  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, learning_rate=None, warmup_steps=None, **extra_args):
    del params, extra_args
    scale = -schedule(state.count, learning_rate, warmup_steps)
    updates = jax.tree.map(lambda g: jnp.asarray(scale, g.dtype) * g, updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _add_decayed_weights(default: float) -> optax.GradientTransformationExtraArgs:
  """`optax.add_decayed_weights(default)` (same state) taking `weight_decay` at runtime."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, weight_decay=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("weight decay needs the parameters: call update(updates, state, params)")
    if weight_decay is None:
      if default == 0.0:
        return updates, state
      weight_decay = default
    return jax.tree.map(lambda g, p: g + weight_decay * p, updates, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def clip_coefficient(norm: jax.Array, max_norm: float) -> jax.Array:
  """The factor global-norm clipping multiplies every gradient by: min(1, max_norm / (norm + 1e-6)).

  `torch.nn.utils.clip_grad_norm_`'s clamped coefficient, which the released step uses.
  A product with one scalar, unlike optax's `(g / norm) * max_norm`, is cheap enough for
  XLA to fuse into every consumer of the gradient, so the step never writes a clipped
  copy of it (273 MiB less temporary memory in the base-size training step).
  """
  return jnp.minimum(max_norm / (norm + CLIP_EPS), 1.0)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """Global-norm clipping by `clip_coefficient` (state: optax's empty clipping state).

  The extra argument `grad_norm`, when given, is the global norm of `updates`, already
  computed by the caller (the training step computes it for its finite check and its
  metrics); passing it saves a read of every gradient. Only the caller can know that it
  is the norm of these updates: under `optax.MultiSteps` the inner chain sees the
  accumulated gradient, not the micro-batch's, so there it must not be passed.
  """

  def update_fn(updates, state, params=None, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    coefficient = clip_coefficient(norm, max_norm)
    return jax.tree.map(lambda g: g * coefficient.astype(g.dtype), updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


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


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _adam_leaf(g, mu, nu, count, b1, b2, eps, bias_correction):
  """Adam on one leaf (or a slice of it): (direction, new mu, new nu), float32 math.

  The moments come back in float32; the caller stores them in their own dtype.
  """
  mu = b1 * _f32(mu) + (1 - b1) * _f32(g)
  nu = b2 * _f32(nu) + (1 - b2) * jnp.square(_f32(g))
  mu_hat, nu_hat = mu, nu
  if bias_correction:
    mu_hat = mu / (1 - b1**count)
    nu_hat = nu / (1 - b2**count)
  return mu_hat / (jnp.sqrt(nu_hat) + eps), mu, nu


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
    out = jax.tree.map(lambda g, m, v: _adam_leaf(g, m, v, count, b1, b2, eps, bias_correction),
                       updates, state.mu, state.nu)
    is_out = lambda x: isinstance(x, tuple)
    direction = jax.tree.map(lambda o, g: o[0].astype(g.dtype), out, updates, is_leaf=is_out)
    mu = jax.tree.map(lambda o, m: o[1].astype(m.dtype), out, state.mu, is_leaf=is_out)
    nu = jax.tree.map(lambda o, v: o[2].astype(v.dtype), out, state.nu, is_leaf=is_out)
    return direction, _AdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


# Axes shorter than this are not factored (optax's `min_dim_size_to_factor`).
MIN_FACTORED_DIM = 128


def factored_view(shape: Sequence[int], min_dim: int = MIN_FACTORED_DIM) -> Tuple[int, ...]:
  """The shape a leaf is factored as: runs of adjacent short axes merged, from the right.

  The factored second moment treats the last two axes of this view as the matrix and
  any leading ones as a batch of matrices. Merging short neighbours makes an attention
  kernel [d, heads, head_dim] a [d, d] matrix, and a scanned stack of them [layers, d,
  heads, head_dim] a batch of [d, d] matrices (optax's two-largest-axes rule would see
  [d, head_dim] and leave them unfactored).
  """
  groups: List[int] = []
  for size in reversed(tuple(shape)):
    if groups and groups[-1] < min_dim and size < min_dim:
      groups[-1] *= size
    else:
      groups.append(size)
  return tuple(reversed(groups))


def _is_factored(view: Tuple[int, ...], min_dim: int = MIN_FACTORED_DIM) -> bool:
  return len(view) >= 2 and min(view[-2:]) >= min_dim


class FactoredAdamState(NamedTuple):
  """State of `scale_by_factored_adam`; unused per-leaf entries are shape-(1,) zeros.

  For a leaf whose `factored_view` is [..., R, C]: `v_row` [..., R] and `v_col` [..., C]
  (the views' row and column means of the squared gradient); other leaves keep a full
  `v`. `mu` is the average of the update (absent, shape (1,), with b1 = 0).
  """
  count: jax.Array
  v_row: Any
  v_col: Any
  v: Any
  mu: Any


def factored_decay(count: jax.Array, b2: float) -> jax.Array:
  """Second-moment decay at step `count` (1-based): Adafactor's 1 - t^-0.8, at most b2.

  Early steps average over the steps so far (step 1 takes the squared gradient as it
  is), so no bias correction is needed.
  """
  return jnp.minimum(b2, 1.0 - _f32(count) ** -0.8)


def _factored_leaf(g, v_row, v_col, v, mu, decay, b1, eps2, factored, row_mean=None):
  """Factored Adam on one leaf (or one slice along a batch axis of its view).

  Args:
    g: the gradient, already reshaped to its `factored_view` (or any shape if unfactored).
    v_row, v_col, v, mu: the stored state of the leaf (mu unused when b1 == 0).
    decay: the second-moment decay of this step; eps2: added to the squared gradient.
    factored: whether the leaf keeps row/column statistics (else a full `v`).
    row_mean: for the two-pass slicing of a 2-D view (rows in blocks), the new `v_row`s
      and `v_col` are precomputed by the caller: then `v_row`, `v_col` are the new
      statistics and `row_mean` their row mean.

  Returns:
    (direction, new v_row, new v_col, new v, new mu), float32 (the caller casts).
  """
  g = _f32(g)
  if factored:
    if row_mean is None:
      squared = jnp.square(g) + eps2
      v_row = decay * _f32(v_row) + (1 - decay) * jnp.mean(squared, axis=-1)
      v_col = decay * _f32(v_col) + (1 - decay) * jnp.mean(squared, axis=-2)
      row_mean = jnp.mean(v_row, axis=-1, keepdims=True)
    direction = g * jax.lax.rsqrt(_f32(v_row) / row_mean)[..., None] * jax.lax.rsqrt(_f32(v_col))[..., None, :]
  else:
    v = decay * _f32(v) + (1 - decay) * (jnp.square(g) + eps2)
    direction = g * jax.lax.rsqrt(v)
  if b1 > 0:
    mu = b1 * _f32(mu) + (1 - b1) * direction
    direction = mu
  return direction, v_row, v_col, v, mu


def scale_by_factored_adam(b1: float, b2: float, eps: float,
                           moment_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """A lean variant of Adam: Adafactor's factored second moment, then an EMA of the update.

  The second moment of a matrix (the last two axes of the leaf's `factored_view`, both
  at least `MIN_FACTORED_DIM` long) is kept as row and column means, O(R + C) instead of
  O(R * C), and the gradient is divided by the square root of their outer product over
  the mean row; other leaves keep a full second moment. The decay is
  `factored_decay` (Adafactor's schedule, at most b2), eps^2 is added to the squared
  gradient. The normalised update is then averaged with decay `b1` (Adafactor's order;
  Adam averages the gradient first); with `b1 = 0` there is no first moment at all.
  Moments are stored in `moment_dtype` (default float32) and computed in float32.
  """

  def init_fn(params):
    def leaf(p):
      view = factored_view(p.shape)
      placeholder = lambda: jnp.zeros((1,), jnp.float32)  # a buffer each: states are donated
      dtype = moment_dtype or jnp.float32
      if _is_factored(view):
        v_row, v_col, v = (jnp.zeros(view[:-1], dtype), jnp.zeros(view[:-2] + view[-1:], dtype), placeholder())
      else:
        v_row, v_col, v = placeholder(), placeholder(), jnp.zeros(p.shape, dtype)
      mu = jnp.zeros(p.shape, dtype) if b1 > 0 else placeholder()
      return v_row, v_col, v, mu

    out = jax.tree.map(leaf, params)
    is_out = lambda x: isinstance(x, tuple)
    pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_out)
    return FactoredAdamState(count=jnp.zeros([], jnp.int32), v_row=pick(0), v_col=pick(1), v=pick(2),
                             mu=pick(3))

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    decay = factored_decay(count, b2)

    def leaf(g, v_row, v_col, v, mu):
      view = factored_view(g.shape) if v.shape == (1,) else g.shape
      direction, *new = _factored_leaf(g.reshape(view), v_row, v_col, v, mu.reshape(view) if b1 > 0 else mu,
                                       decay, b1, eps**2, factored=v.shape == (1,) and _is_factored(view))
      return (direction.reshape(g.shape).astype(g.dtype),
              *(n.reshape(o.shape).astype(o.dtype) for n, o in zip(new, (v_row, v_col, v, mu))))

    out = jax.tree.map(leaf, updates, state.v_row, state.v_col, state.v, state.mu)
    is_out = lambda x: isinstance(x, tuple)
    pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_out)
    return pick(0), FactoredAdamState(count=count, v_row=pick(1), v_col=pick(2), v=pick(3), mu=pick(4))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """The full optimizer chain; `total_steps` counts optimizer updates."""
  schedule = learning_rate_schedule(config, total_steps)
  chain = []
  if config.max_grad_norm > 0:
    chain.append(clip_by_global_norm(config.max_grad_norm))
  moment_dtype = jnp.dtype(config.moment_dtype) if config.moment_dtype else None
  if config.second_moment == "factored":
    direction = scale_by_factored_adam(config.b1, config.b2, config.eps, moment_dtype)
  else:
    direction = scale_by_adam(config.b1, config.b2, config.eps, config.bias_correction, moment_dtype)
  chain += [
      direction,
      optax.masked(_add_decayed_weights(config.weight_decay), decay_mask),
      _scale_by_schedule(schedule),
  ]
  optimizer = optax.chain(*chain)
  if config.gradient_accumulation_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=config.gradient_accumulation_steps)
  return optimizer


# ------------------------------------------------------------------ applying updates

# (grads, opt_state, params, finite, hyper=None, grad_norm=None) -> (params, opt_state);
# `hyper` maps `RUNTIME_INPUTS` names to runtime values (missing ones: the config's
# constants); `grad_norm`, when given, is `optax.tree.norm(grads)`, which clipping then
# reuses (see `clip_by_global_norm`; never pass it with gradient accumulation).
UpdateFn = Callable[..., Tuple[Any, Any]]

# Largest slice the sliced update works on at once (bytes of one leaf's slice, float32).
SLICE_BYTES = 32 * 2**20


def whole_update_fn(optimizer: optax.GradientTransformation) -> UpdateFn:
  """`(grads, opt_state, params, finite, hyper=None) -> (params, opt_state)`: the chain, guarded.

  A non-finite step keeps parameters and state. The guard is a branch, not `jnp.where`
  over the whole state, with which XLA materialises the new state beside the old one
  (13 GiB more on the xxlarge model, benchmarks/memory_plan.py). A given `grad_norm`
  reaches the clipping (the caller passes none under accumulation: see `UpdateFn`).
  """

  def update(grads, opt_state, params, finite, hyper=None, grad_norm=None):
    extra = dict(hyper or {})
    if grad_norm is not None:
      extra["grad_norm"] = grad_norm

    def apply(_):
      updates, new_opt_state = optimizer.update(grads, opt_state, params, **extra)
      return optax.apply_updates(params, updates), new_opt_state

    return jax.lax.cond(finite, apply, lambda _: (params, opt_state), None)

  return update


def make_update_fn(config: OptimizerConfig, total_steps: int,
                   optimizer: Optional[optax.GradientTransformation] = None,
                   slice_bytes: int = SLICE_BYTES) -> UpdateFn:
  """The step's optimizer application for `config.update` (state: `make_optimizer`'s).

  `slice_bytes` bounds a slice of the sliced update (tests make it tiny).
  """
  if config.update == "whole":
    return whole_update_fn(optimizer or make_optimizer(config, total_steps))
  return _sliced_update_fn(config, total_steps, slice_bytes)


def slice_count(leading: int, nbytes: int, target: int) -> int:
  """The fewest equal slices along an axis of length `leading` with at most `target` bytes.

  Every row alone when no divisor gets there (a long prime axis costs loop iterations,
  not memory).
  """
  if nbytes <= target or leading <= 1:
    return 1
  for n in range(2, leading + 1):
    if leading % n == 0 and nbytes / n <= target:
      return n
  return leading


def _in_slices(fn, n: int, read: Tuple[jax.Array, ...], carried: Tuple[jax.Array, ...]):
  """`fn(read_blocks, carried_blocks) -> new carried blocks` over n blocks along axis 0.

  `carried` arrays are rewritten block by block inside a `fori_loop` (in place: XLA
  reuses their buffers), `read` arrays are only read; all have the same leading length.
  """
  if n == 1:
    return tuple(new.astype(old.dtype) for new, old in zip(fn(read, carried), carried))
  size = carried[0].shape[0] // n

  def body(i, carry):
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=0)
    new = fn(tuple(take(x) for x in read), tuple(take(x) for x in carry))
    return tuple(jax.lax.dynamic_update_slice_in_dim(x, block.astype(x.dtype), i * size, axis=0)
                 for x, block in zip(carry, new))

  return jax.lax.fori_loop(0, n, body, tuple(carried))


def _sliced_update_fn(config: OptimizerConfig, total_steps: int, slice_bytes: int) -> UpdateFn:
  """The chain of `make_optimizer(config)` applied leaf by leaf, slice by slice, in place.

  Per slice it computes exactly what the chain computes for those elements: the clipped
  gradient, the direction and new moments (`_adam_leaf` / `_factored_leaf`), the
  decoupled decay, `-lr *` and the addition to the parameter; a non-finite step keeps
  every slice. The one reduction that crosses slices, the column means of a 2-D
  factored leaf cut into row blocks, takes a first pass over the blocks.
  """
  schedule = learning_rate_schedule(config, total_steps)
  clip = config.max_grad_norm > 0
  factored = config.second_moment == "factored"
  b1, b2, eps = config.b1, config.b2, config.eps

  def update(grads, opt_state, params, finite, hyper=None, grad_norm=None):
    hyper = hyper or {}
    states = list(opt_state)
    direction_index = 1 if clip else 0
    old = states[direction_index]
    lr = schedule(states[-1].count, hyper.get("learning_rate"), hyper.get("warmup_steps"))
    weight_decay = hyper.get("weight_decay")
    count = old.count + 1
    if clip:
      norm = optax.tree.norm(grads) if grad_norm is None else grad_norm
      coefficient = clip_coefficient(norm, config.max_grad_norm)

    def clipped(g):
      return g * coefficient.astype(g.dtype) if clip else g

    def keep(new, old_value):  # the finite guard, per slice
      return jnp.where(finite, new.astype(old_value.dtype), old_value)

    def finish(p, direction, decayed):
      u = direction.astype(p.dtype)
      if decayed and weight_decay is not None:
        u = u + jnp.asarray(weight_decay, p.dtype) * p
      elif decayed and config.weight_decay:
        u = u + config.weight_decay * p
      return p + (-lr).astype(p.dtype) * u

    decayed_tree = decay_mask(params)
    if factored:
      decay = factored_decay(count, b2)

    def adam_leaf(g, p, mu, nu, decayed):
      def fn(read, carried):
        (g_blk,), (p_blk, mu_blk, nu_blk) = read, carried
        direction, new_mu, new_nu = _adam_leaf(clipped(g_blk), mu_blk, nu_blk, count, b1, b2, eps,
                                               config.bias_correction)
        return (keep(finish(p_blk, direction, decayed), p_blk), keep(new_mu, mu_blk), keep(new_nu, nu_blk))

      n = slice_count(p.shape[0] if p.ndim else 1, p.size * 4, slice_bytes)
      return _in_slices(fn, n, (g,), (p, mu, nu))

    def factored_leaf(g, p, v_row, v_col, v, mu, decayed):
      shape = p.shape
      view = factored_view(shape) if v.shape == (1,) else shape
      g, p = g.reshape(view), p.reshape(view)
      has_mu = b1 > 0
      mu = mu.reshape(view) if has_mu else mu
      is_factored = v.shape == (1,) and _is_factored(view)
      two_d = is_factored and len(view) == 2
      n = slice_count(view[0] if view else 1, p.size * 4, slice_bytes)
      if two_d and n > 1:
        # Pass 1: the new row statistics (float32) block by block, the column sums accumulated.
        size = view[0] // n

        def stats_body(i, carry):
          rows, col_sum = carry
          take = lambda x: jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=0)
          squared = jnp.square(_f32(clipped(take(g)))) + eps**2
          new_rows = decay * _f32(take(v_row)) + (1 - decay) * jnp.mean(squared, axis=-1)
          return (jax.lax.dynamic_update_slice_in_dim(rows, new_rows, i * size, axis=0),
                  col_sum + jnp.sum(squared, axis=0))

        rows, col_sum = jax.lax.fori_loop(
            0, n, stats_body, (jnp.zeros(view[:1], jnp.float32), jnp.zeros(view[-1:], jnp.float32)))
        cols = decay * _f32(v_col) + (1 - decay) * col_sum / view[0]
        row_mean = jnp.mean(rows, axis=-1, keepdims=True)
        new_v_row, new_v_col = keep(rows, v_row), keep(cols, v_col)

        # Pass 2: the update with the new statistics.
        def apply(read, carried):
          g_blk, v_row_blk = read
          p_blk, mu_blk = carried if has_mu else (carried[0], mu)
          direction, _, _, _, new_mu = _factored_leaf(clipped(g_blk), v_row_blk, cols, v, mu_blk, decay, b1,
                                                      eps**2, True, row_mean=row_mean)
          new_p = keep(finish(p_blk, direction, decayed), p_blk)
          return (new_p, keep(new_mu, mu_blk)) if has_mu else (new_p,)

        out = _in_slices(apply, n, (g, rows), (p, mu) if has_mu else (p,))
        new_p, new_mu = (out[0], out[1]) if has_mu else (out[0], mu)
        return new_p.reshape(shape), new_v_row, new_v_col, v, (new_mu.reshape(shape) if has_mu else mu)

      # Slices along a batch axis of the view (or elementwise leaves): each slice's
      # statistics are its own.
      sliceable = [x for x in (v_row, v_col, v, mu) if x.shape != (1,)]

      def fn(read, carried):
        (g_blk,), (p_blk, *state_blks) = read, carried
        blocks = iter(state_blks)
        full = [next(blocks) if x.shape != (1,) else x for x in (v_row, v_col, v, mu)]
        direction, *new_state = _factored_leaf(clipped(g_blk), *full, decay, b1, eps**2, is_factored)
        new_p = keep(finish(p_blk, direction, decayed), p_blk)
        return (new_p, *(keep(new, blk) for new, old_x, blk in zip(new_state, (v_row, v_col, v, mu), full)
                         if old_x.shape != (1,)))

      out = _in_slices(fn, n, (g,), (p, *sliceable))
      new_p, rest = out[0], iter(out[1:])
      new_state = [next(rest) if x.shape != (1,) else x for x in (v_row, v_col, v, mu)]
      if has_mu:
        new_state[3] = new_state[3].reshape(shape)
      return (new_p.reshape(shape), *new_state)

    if factored:
      out = jax.tree.map(factored_leaf, grads, params, old.v_row, old.v_col, old.v, old.mu, decayed_tree)
      is_out = lambda x: isinstance(x, tuple)
      pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_out)
      new_direction_state = FactoredAdamState(count=jnp.where(finite, count, old.count), v_row=pick(1),
                                              v_col=pick(2), v=pick(3), mu=pick(4))
    else:
      out = jax.tree.map(adam_leaf, grads, params, old.mu, old.nu, decayed_tree)
      is_out = lambda x: isinstance(x, tuple)
      pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_out)
      new_direction_state = _AdamState(count=jnp.where(finite, count, old.count), mu=pick(1), nu=pick(2))
    states[direction_index] = new_direction_state
    schedule_count = states[-1].count
    states[-1] = states[-1]._replace(count=jnp.where(finite, optax.safe_increment(schedule_count),
                                                     schedule_count))
    return pick(0), tuple(states)

  return update
