"""The DeBERTa-v2/v3 encoder in Flax linen, numerically equal to `transformers.DebertaV2Model`.

The reference is `transformers/models/deberta_v2/modeling_deberta_v2.py`; submodules carry
its attribute names (`embeddings/word_embeddings`, `encoder/layer/attention/self/query_proj`,
`LayerNorm`, ...) so `deberta_v2_convert` maps checkpoints with a few generic rules. That
module also loads and saves HF checkpoints (`load_pretrained`, `save_pretrained`); it
imports this one, never the reverse.

Layout and execution:
* Layer 0 runs on its own (`encoder/layer_0`); layers 1..N-1 run under `nn.scan`
  (`encoder/layer`, parameters stacked on a leading `layers` axis), so a 48-layer model
  traces one layer body and compiles in seconds. Layer 0 sits outside the scan because the
  optional convolution (`conv_kernel_size > 0`) consumes its output together with the
  embedding output; keeping it outside in every configuration makes the parameter tree
  independent of the convolution and keeps the scan body free of a per-layer branch.
* `remat_policy` ("none", "full", "dots", "dots_no_batch") wraps every layer in
  `nn.remat` with that `jax.checkpoint_policies` policy.
* `layer_loop` ("scan", "unroll", "auto") is how the compiled program runs layers
  1..N-1. "scan" is a while loop over the stacked parameters: each iteration slices its
  layer's weights out of the stack (a copy on XLA:CPU), writes its residuals into stacked
  buffers, and the backward pass reads those back and writes each layer's weight
  gradient into a zero-filled stacked buffer (dynamic-update-slice). "unroll" passes
  `unroll=N-1` to the same `nn.scan`, so the parameter tree is unchanged; XLA then sees
  straight-line code (static slices, no loop-carried buffers) but still concatenates
  the per-layer gradients into the stack, and compiles about twice as long. "auto"
  takes the platform's entry of `AUTO_LAYER_LOOP`.
* Relative-position index tables are numpy constants built at trace time from the static
  sequence length (cached per length). Only the rows of the relative-embedding table that
  the tables reach are projected, which for short sentences is far fewer than the
  2 * `position_buckets` rows `transformers` projects; the gathered scores are identical.
* `dtype` is the compute dtype; parameters are `param_dtype` (float32). Attention scores
  are masked and soft-maxed in float32.

Deliberate differences from `transformers` (none changes a value on unpadded positions):
* Masked scores are filled with float32's minimum instead of the compute dtype's.
* Only 2-D attention masks [batch, length] are accepted (`transformers`' embedding layer
  cannot broadcast other ranks either).
* `z_steps` (an inference-time loop of the last layer, 0 in every released checkpoint) and
  `output_attentions` are not implemented.

Logical parameter axes (for `nn.logical_to_mesh_sharding` rules):
  `vocab` word-embedding rows; `positions` absolute-position rows; `token_types`
  token-type rows; `relpos` relative-embedding rows; `embed` the model width;
  `input_embed` the embedding-table width, used instead of `embed` only when
  `embedding_size != hidden_size`; `heads` attention heads; `kv` per-head width; `mlp`
  feed-forward width; `conv_window` and `conv_in` the convolution's window and
  input-channel axes; `layers` the scan axis of layers 1..N-1.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from d2e2s_jax import settings
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config

Array = jax.Array
Dtype = Any

# The `remat_policy` setting's values (d2e2s_jax/settings.py), in its order -> jax policy.
REMAT_POLICIES = dict(zip(settings.REMAT_POLICIES, (
    None,  # none
    jax.checkpoint_policies.nothing_saveable,  # full
    jax.checkpoint_policies.dots_saveable,  # dots
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # dots_no_batch
), strict=True))

# The `layer_loop` setting's values; "auto" resolves per platform with this table (the
# measurements behind it are in the README's Performance section).
LAYER_LOOPS = settings.LAYER_LOOPS
# CPU: unrolled, since host memory is retained (host_memory.py): the base-size training
# step takes 0.91x the time of scan's on an AMD EPYC and 0.94x on an Intel Xeon (2 cores
# each), prediction is unchanged, and compiles take 1.2x-1.5x as long (scan keeps them
# fast at any depth). Under glibc's default allocator the Intel Xeon favours scan.
AUTO_LAYER_LOOP = {"cpu": "unroll"}
AUTO_LAYER_LOOP_OTHERWISE = "scan"  # GPU/TPU (not yet measured): keep the fast compile at 48 layers


def resolve_layer_loop(layer_loop: str, platform: Optional[str] = None) -> str:
  """"scan" or "unroll" for a `layer_loop` value; "auto" looks up `platform` (default: jax's backend)."""
  if layer_loop not in LAYER_LOOPS:
    raise ValueError(f"layer_loop {layer_loop!r} not in {list(LAYER_LOOPS)}")
  if layer_loop != "auto":
    return layer_loop
  return AUTO_LAYER_LOOP.get(platform or jax.default_backend(), AUTO_LAYER_LOOP_OTHERWISE)


def activation(name: str) -> Callable[[Array], Array]:
  """The activation `transformers.activations.ACT2FN[name]` computes."""
  table = {
      "gelu": functools.partial(jax.nn.gelu, approximate=False),
      "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
      "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
      "relu": jax.nn.relu,
      "tanh": jnp.tanh,
      "silu": jax.nn.silu,
      "swish": jax.nn.silu,
  }
  return table[name]


# ----------------------------------------------------------------------------------------
# Relative positions (numpy, trace time).


def log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
  """HF `make_log_bucket_position`, in float32 like the PyTorch code so bucket edges agree."""
  sign = np.sign(relative_pos)
  mid = bucket_size // 2
  abs_pos = np.where((relative_pos < mid) & (relative_pos > -mid), mid - 1, np.abs(relative_pos))
  ratio = abs_pos.astype(np.float32) / np.float32(mid)
  log_pos = np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
  return np.where(abs_pos <= mid, relative_pos.astype(np.float32), log_pos * sign).astype(np.int64)


@functools.lru_cache(maxsize=64)
def relative_position_tables(length: int, att_span: int, position_buckets: int,
                             max_relative_positions: int) -> Tuple[np.ndarray, np.ndarray, int, int]:
  """Index tables of the c2p and p2c terms for a sequence of `length` tokens.

  Returns:
    (c2p_index, p2c_index, first_row, row_count): `c2p_index[i, j]` is the relative
    embedding row that query i uses against key j; `p2c_index[j, i]` the row key j uses
    against query i (HF's layout before its transpose). Both are offset by `first_row`, the
    first of the `row_count` rows of the relative table they reach.
  """
  positions = np.arange(length, dtype=np.int64)
  relative = positions[:, None] - positions[None, :]
  if position_buckets > 0 and max_relative_positions > 0:
    relative = log_bucket_position(relative, position_buckets, max_relative_positions)
  c2p = np.clip(relative + att_span, 0, 2 * att_span - 1)
  p2c = np.clip(-relative + att_span, 0, 2 * att_span - 1)
  first = int(min(c2p.min(), p2c.min()))
  last = int(max(c2p.max(), p2c.max()))
  c2p, p2c = (c2p - first).astype(np.int32), (p2c - first).astype(np.int32)
  c2p.flags.writeable = p2c.flags.writeable = False
  return c2p, p2c, first, last - first + 1


# ----------------------------------------------------------------------------------------
# Modules.


def _dense(features, axes: Tuple[str, ...], config: DebertaV2Config, dtype: Dtype, param_dtype: Dtype,
           name: str, use_bias: bool = True, axis: Any = -1) -> nn.DenseGeneral:
  """A Linear with HF's normal(initializer_range) init and logical axis names."""
  init = nn.initializers.normal(config.initializer_range)
  output_axes = axes[-len(features):] if isinstance(features, tuple) else axes[-1:]
  return nn.DenseGeneral(
      features=features, axis=axis, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, output_axes), name=name)


def _layer_norm(config: DebertaV2Config, dtype: Dtype, param_dtype: Dtype, name: str = "LayerNorm") -> nn.LayerNorm:
  # use_fast_variance=False: E[(x - mean)^2] as PyTorch computes it; E[x^2] - mean^2 loses
  # digits on activations with a large mean.
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), name=name)


def _embed(rows: int, width: int, axes: Tuple[str, str], config: DebertaV2Config, dtype: Dtype,
           param_dtype: Dtype, name: str, zero_row: Optional[int] = None) -> nn.Embed:
  def init(key, shape, dtype=jnp.float32):
    table = nn.initializers.normal(config.initializer_range)(key, shape, dtype)
    # PyTorch's Embedding(padding_idx=...) initialises the pad row to zero.
    return table if zero_row is None or not 0 <= zero_row < shape[0] else table.at[zero_row].set(0)
  return nn.Embed(rows, width, dtype=dtype, param_dtype=param_dtype,
                  embedding_init=nn.with_logical_partitioning(init, axes), name=name)


class DebertaV2Embeddings(nn.Module):
  """Word (+ absolute position) (+ token type) embeddings, projection, LayerNorm, mask."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, mask: Array, token_type_ids: Optional[Array],
               position_ids: Optional[Array], deterministic: bool) -> Array:
    cfg = self.config
    width = cfg.input_embedding_size
    width_axis = "embed" if width == cfg.hidden_size else "input_embed"
    embed = functools.partial(_embed, config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    words = embed(cfg.vocab_size, width, ("vocab", width_axis), name="word_embeddings",
                  zero_row=cfg.pad_token_id)(input_ids)
    # PyTorch's padding_idx row never receives a gradient; stopping it here keeps fine-tuning
    # identical to `transformers` when pad ids sit under a nonzero mask.
    words = jnp.where((input_ids == cfg.pad_token_id)[..., None], jax.lax.stop_gradient(words), words)
    embeddings = words
    if cfg.position_biased_input:
      if position_ids is None:
        if input_ids.shape[-1] > cfg.max_position_embeddings:
          # Out-of-range rows would read as NaN under jit; PyTorch raises an IndexError.
          raise ValueError(f"input length {input_ids.shape[-1]} exceeds max_position_embeddings "
                           f"{cfg.max_position_embeddings} of a model with absolute positions")
        position_ids = jnp.arange(input_ids.shape[-1])[None, :]
      embeddings = embeddings + embed(cfg.max_position_embeddings, width, ("positions", width_axis),
                                      name="position_embeddings")(position_ids)
    if cfg.type_vocab_size > 0:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      embeddings = embeddings + embed(cfg.type_vocab_size, width, ("token_types", width_axis),
                                      name="token_type_embeddings")(token_type_ids)
    if width != cfg.hidden_size:
      embeddings = _dense(cfg.hidden_size, ("input_embed", "embed"), cfg, self.dtype, self.param_dtype,
                          name="embed_proj", use_bias=False)(embeddings)
    embeddings = _layer_norm(cfg, self.dtype, self.param_dtype)(embeddings)
    embeddings = embeddings * mask[..., None].astype(embeddings.dtype)
    return nn.Dropout(cfg.hidden_dropout_prob)(embeddings, deterministic=deterministic)


class DisentangledSelfAttention(nn.Module):
  """Content attention plus the c2p / p2c relative-position terms (HF's class of this name)."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, pair_mask: Array, rel_embeddings: Optional[Array],
               deterministic: bool) -> Array:
    cfg = self.config
    heads, head_size = cfg.num_attention_heads, cfg.head_size
    proj = functools.partial(_dense, (heads, head_size), ("embed", "heads", "kv"), cfg, self.dtype,
                             self.param_dtype)
    query_proj, key_proj = proj(name="query_proj"), proj(name="key_proj")
    query, key, value = query_proj(hidden), key_proj(hidden), proj(name="value_proj")(hidden)
    # [batch, length, heads, head_size]. Scaling the query once scales the content and c2p
    # terms; p2c is scaled through its positional query below.
    scale = math.sqrt(head_size * cfg.score_scale_factor)
    query = query / jnp.asarray(scale, self.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)

    if cfg.relative_attention:
      rel = nn.Dropout(cfg.hidden_dropout_prob)(rel_embeddings, deterministic=deterministic)
      c2p_index, p2c_index, _, _ = relative_position_tables(
          hidden.shape[1], cfg.att_span, cfg.position_buckets, cfg.relative_range)
      if "c2p" in cfg.pos_att_type:
        pos_key = key_proj(rel) if cfg.share_att_key else proj(name="pos_key_proj")(rel)
        c2p = jnp.einsum("bqhd,rhd->bhqr", query, pos_key)
        scores = scores + jnp.take_along_axis(c2p, c2p_index[None, None], axis=-1)
      if "p2c" in cfg.pos_att_type:
        pos_query = query_proj(rel) if cfg.share_att_key else proj(name="pos_query_proj")(rel)
        pos_query = pos_query / jnp.asarray(scale, self.dtype)
        # Rows are keys here; gathering along the key's relative row and swapping the last
        # two axes is HF's `gather(...).transpose(-1, -2)`.
        p2c = jnp.einsum("bkhd,rhd->bhkr", key, pos_query)
        scores = scores + jnp.swapaxes(jnp.take_along_axis(p2c, p2c_index[None, None], axis=-1), -1, -2)

    scores = jnp.where(pair_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


class DebertaV2Attention(nn.Module):
  """Self-attention followed by the output projection, residual and LayerNorm."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, pair_mask: Array, rel_embeddings: Optional[Array],
               deterministic: bool) -> Array:
    cfg = self.config
    context = DisentangledSelfAttention(cfg, self.dtype, self.param_dtype, name="self")(
        hidden, pair_mask, rel_embeddings, deterministic)
    return _SelfOutput(cfg, self.dtype, self.param_dtype, name="output")(context, hidden, deterministic)


class _SelfOutput(nn.Module):
  """HF `DebertaV2SelfOutput`: merges the heads with `dense`, then residual + LayerNorm."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: Array, residual: Array, deterministic: bool) -> Array:
    cfg = self.config
    out = _dense(cfg.hidden_size, ("heads", "kv", "embed"), cfg, self.dtype, self.param_dtype, name="dense",
                 axis=(-2, -1))(context)
    out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
    return _layer_norm(cfg, self.dtype, self.param_dtype)(out + residual)


class _Intermediate(nn.Module):
  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array) -> Array:
    cfg = self.config
    out = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, self.dtype, self.param_dtype, name="dense")(hidden)
    return activation(cfg.hidden_act)(out)


class _Output(nn.Module):
  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, intermediate: Array, residual: Array, deterministic: bool) -> Array:
    cfg = self.config
    out = _dense(cfg.hidden_size, ("mlp", "embed"), cfg, self.dtype, self.param_dtype, name="dense")(intermediate)
    out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
    return _layer_norm(cfg, self.dtype, self.param_dtype)(out + residual)


def _transformer_layer(cfg: DebertaV2Config, dtype: Dtype, param_dtype: Dtype, deterministic: bool,
                       hidden: Array, pair_mask: Array, rel_embeddings: Optional[Array]) -> Array:
  """HF `DebertaV2Layer.forward`; called inside a compact method, whose scope owns the params."""
  attention = DebertaV2Attention(cfg, dtype, param_dtype, name="attention")(
      hidden, pair_mask, rel_embeddings, deterministic)
  intermediate = _Intermediate(cfg, dtype, param_dtype, name="intermediate")(attention)
  return _Output(cfg, dtype, param_dtype, name="output")(intermediate, attention, deterministic)


class DebertaV2Layer(nn.Module):
  """One transformer layer. `deterministic` is an attribute so that remat needs no static args."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, hidden: Array, pair_mask: Array, rel_embeddings: Optional[Array]) -> Array:
    return _transformer_layer(self.config, self.dtype, self.param_dtype, self.deterministic, hidden, pair_mask,
                              rel_embeddings)


class _ScanStep(nn.Module):
  """A layer in `nn.scan`'s (carry, broadcast...) -> (carry, output) form, same parameter names."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  deterministic: bool = True
  collect_hidden_states: bool = False

  @nn.compact
  def __call__(self, hidden: Array, pair_mask: Array, rel_embeddings: Optional[Array]):
    hidden = _transformer_layer(self.config, self.dtype, self.param_dtype, self.deterministic, hidden, pair_mask,
                                rel_embeddings)
    return hidden, (hidden if self.collect_hidden_states else None)


def _maybe_remat(cls, policy: str, prevent_cse: bool = True):
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy {policy!r} not in {sorted(REMAT_POLICIES)}")
  if policy == "none":
    return cls
  # Inside nn.scan, CSE cannot merge the recomputation away, so prevent_cse only costs time.
  return nn.remat(cls, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse)


def _scan_unroll(layer_loop: str, length: int) -> int:
  # Unrolling keeps nn.scan (and so the stacked `layers` parameter axis, checkpoints and
  # sharding rules) and only changes the compiled loop.
  return length if resolve_layer_loop(layer_loop) == "unroll" else 1


class ConvLayer(nn.Module):
  """The convolution after layer 0 (HF `ConvLayer`): conv over time, mask, act, residual LN."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, residual: Array, mask: Array, deterministic: bool) -> Array:
    cfg = self.config
    pad = (cfg.conv_kernel_size - 1) // 2
    init = nn.initializers.normal(cfg.initializer_range)
    out = nn.Conv(cfg.hidden_size, (cfg.conv_kernel_size,), padding=((pad, pad),), feature_group_count=cfg.conv_groups,
                  dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=nn.with_logical_partitioning(init, ("conv_window", "conv_in", "embed")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), name="conv")(hidden)
    keep = mask[..., None].astype(bool)
    out = jnp.where(keep, out, 0)
    out = activation(cfg.conv_act)(nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic))
    out = _layer_norm(cfg, self.dtype, self.param_dtype)(residual + out)
    return out * keep.astype(out.dtype)


class DebertaV2Encoder(nn.Module):
  """Relative embeddings, layer 0 (+ convolution), then layers 1..N-1 under `nn.scan`."""

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  layer_loop: str = "auto"

  @nn.compact
  def __call__(self, embeddings: Array, mask: Array, deterministic: bool, output_hidden_states: bool):
    cfg = self.config
    mask = mask.astype(bool)
    pair_mask = mask[:, None, :, None] & mask[:, None, None, :]  # HF get_attention_mask
    rel_embeddings = None
    if cfg.relative_attention:
      _, _, first_row, row_count = relative_position_tables(
          embeddings.shape[1], cfg.att_span, cfg.position_buckets, cfg.relative_range)
      table = _embed(2 * cfg.att_span, cfg.hidden_size, ("relpos", "embed"), cfg, self.dtype, self.param_dtype,
                     name="rel_embeddings")
      # LayerNorm is per row, so normalising only the reachable rows is exact.
      rel_embeddings = table(jnp.arange(first_row, first_row + row_count))
      if "layer_norm" in cfg.norm_rel_ebd_parts:
        rel_embeddings = _layer_norm(cfg, self.dtype, self.param_dtype)(rel_embeddings)
    elif "layer_norm" in cfg.norm_rel_ebd_parts:
      # `transformers` builds this LayerNorm from `norm_rel_ebd` alone, so its checkpoints
      # carry it even without relative attention. Applying it to a dummy row creates the
      # (unused) parameters so conversion stays exact both ways; XLA drops the dead op.
      _layer_norm(cfg, self.dtype, self.param_dtype)(jnp.zeros((1, cfg.hidden_size), self.dtype))

    first_layer = _maybe_remat(DebertaV2Layer, self.remat_policy)
    hidden = first_layer(cfg, self.dtype, self.param_dtype, deterministic, name="layer_0")(
        embeddings, pair_mask, rel_embeddings)
    if cfg.conv_kernel_size > 0:
      hidden = ConvLayer(cfg, self.dtype, self.param_dtype, name="conv")(embeddings, hidden, mask, deterministic)
    all_hidden = [embeddings, hidden]

    if cfg.num_hidden_layers > 1:
      scanned = nn.scan(
          _maybe_remat(_ScanStep, self.remat_policy, prevent_cse=False), variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers - 1,
          unroll=_scan_unroll(self.layer_loop, cfg.num_hidden_layers - 1),
          metadata_params={nn.PARTITION_NAME: "layers"})
      hidden, stacked = scanned(cfg, self.dtype, self.param_dtype, deterministic, output_hidden_states,
                                name="layer")(hidden, pair_mask, rel_embeddings)
      if output_hidden_states:
        all_hidden.extend(stacked[i] for i in range(cfg.num_hidden_layers - 1))
    if output_hidden_states:
      return hidden, tuple(all_hidden)
    return hidden


class DebertaV2Model(nn.Module):
  """The DeBERTa-v2/v3 encoder: `apply({"params": p}, input_ids, attention_mask)`.

  Attributes:
    config: the encoder configuration.
    dtype: compute dtype (e.g. jnp.bfloat16); softmax and LayerNorm statistics stay float32.
    param_dtype: parameter dtype.
    remat_policy: "none", "full", "dots" or "dots_no_batch" (see REMAT_POLICIES).
    layer_loop: "scan", "unroll" or "auto" (see LAYER_LOOPS, `resolve_layer_loop`).
  """

  config: DebertaV2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  layer_loop: str = "auto"

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None, position_ids: Optional[Array] = None, *,
               deterministic: bool = True, output_hidden_states: bool = False):
    """Encodes a batch.

    Args:
      input_ids: int [batch, length].
      attention_mask: [batch, length], nonzero on real tokens (default: all ones).
      token_type_ids: int [batch, length] (only with type_vocab_size > 0; default zeros).
      position_ids: int [batch or 1, length] (only with position_biased_input; default arange).
      deterministic: turn dropout off (True) or on (needs a "dropout" rng).
      output_hidden_states: also return every hidden state, as HF does.

    Returns:
      The last hidden state [batch, length, hidden] in `dtype`; with output_hidden_states,
      (last, (embedding output, layer 1 output, ..., layer N output)).
    """
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
    embeddings = DebertaV2Embeddings(self.config, self.dtype, self.param_dtype, name="embeddings")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic)
    return DebertaV2Encoder(self.config, self.dtype, self.param_dtype, self.remat_policy, self.layer_loop,
                            name="encoder")(
        embeddings, attention_mask, deterministic, output_hidden_states)


def init_params(model: DebertaV2Model, rng: Array, length: int = 8) -> Any:
  """Random parameters (unboxed float32 arrays) for `model`."""
  ids = jnp.zeros((1, length), jnp.int32)
  # Jitted: op-by-op initialisation of a scanned model is several times slower.
  return nn.unbox(jax.jit(lambda key: model.init(key, ids)["params"])(rng))


def abstract_params(model: DebertaV2Model) -> Any:
  """The parameter tree as boxed `jax.ShapeDtypeStruct`s, without allocating anything."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]
