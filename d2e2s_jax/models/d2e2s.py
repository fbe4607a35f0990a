"""The D2E2S head (`D2E2SHead`), the full model (`D2E2S` = DeBERTa + head) and its config.

The head follows /work/shared/docs/d2e2s-reference.md, "The model", steps 2-9: a BiLSTM
channel over the encoder states, a syntactic and a semantic GCN over both, the fusion
("TIN": residual blocks, BiLSTM, MLP), a parameter-free self-attention residual, the span
and pair classifiers, and the KL term between the semantic and syntactic graphs.

Every gather indexed per sentence (the range-max lookups, the pair features, the span
bounds of pairs) is written per sentence under `jax.vmap`, so that on a mesh that splits
the batch (`data`, `fsdp`) it stays on the sentence's device instead of all-gathering
activations to the full batch (checked on 8 fake devices in tests/test_d2e2s.py).

Deliberate differences from the released code (each also noted where it happens):
* Both LSTMs honour sentence lengths (see `lstm.py`); the released ones run unpacked.
* The released TIN computes two residual blocks, `R_1(h + SynGCN(h))` and
  `R_3(h + SemGCN(h))`, and discards them. We compute neither (nor `SynGCN(h)`, nor the
  GCN layers of `SemGCN(h)`); only the attention graph `A_h` of `SemGCN(h)` is computed,
  for the KL term. Outputs are unchanged; their checkpoint weights are listed as ignored
  by the importer, as are `fc.*` and `attention_layer.*`.
* Span and pair max-pooling use a sparse table of range maxima instead of materialising
  [B, S, T, d] masked copies of the sequence: the same values, O(T log T d) memory.
* Padded span candidates get a zero pool instead of -1e30 (the released value), so that
  no huge logit exists even where the loss masks it.
* `[CLS]` is read at position 0 instead of by token id.
* Masked keys of the self-attention residual get float32's minimum rather than -inf, so
  that a padding row (no real key) yields zeros instead of NaN; real rows are unchanged.
* The KL term sums over the padded [T, T] matrices like the released one, but our T is a
  bucket length rather than the batch maximum, so its value (not its gradient when
  differentiable: padded entries are constants) depends on the bucket. It is
  non-differentiable by default, as released, and `kl_differentiable` makes it a loss.
  Its `|kl / 2|` is floored at 1e-12 so that identical graphs give a large finite term.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from d2e2s_jax import settings
from d2e2s_jax.data.examples import ENTITY_OUTPUTS, SENTIMENT_OUTPUTS
from d2e2s_jax.models import decoding
from d2e2s_jax.models.dropout import Dropout
from d2e2s_jax.models.gcn import SemGCN, SynGCN, SyntacticEdges, torch_like_dense
from d2e2s_jax.models.lstm import BiLSTM

Array = jax.Array

_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by the released TIN


# D2E2SConfig field -> the setting it takes its value (and default, and rule) from.
SETTING_NAMES = {
    "hidden_dim": "hidden_dim",
    "lstm_layers": "lstm_layers",
    "drop_out_rate": "drop_out_rate",
    "gcn_layers": "gcn_layers",
    "gcn_dropout": "gcn_dropout",
    "attention_heads": "attention_heads",
    "prop_drop": "prop_drop",
    "size_embedding": "size_embedding",
    "sen_filter_threshold": "sen_filter_threshold",
    "max_decoded_spans": "max_decoded_spans",
    "kl_weight": "kl_weight",
    "kl_differentiable": "kl_differentiable",
    "graph_implementation": "graph_implementation",
    "dtype": "compute_dtype",
    "remat_policy": "remat_policy",
    "layer_loop": "layer_loop",
}
_DEFAULT = settings.component_defaults(SETTING_NAMES)

# The head's dropout rates that the training step can take as runtime inputs (`rates=` of
# `D2E2S.__call__`) instead of compile-time constants: a search's trials that differ only
# in them share one compiled step (see dropout.py).
RUNTIME_RATES = ("drop_out_rate", "gcn_dropout", "prop_drop")


@dataclasses.dataclass(frozen=True)
class D2E2SConfig:
  """What the D2E2S head computes (and, with `encoder`, the full model).

  The fields named in `SETTING_NAMES` take their defaults and valid ranges from
  `d2e2s_jax.settings` (the guide's settings, as on the command line); see the settings'
  help texts for their meaning. The released code ignores its own GCN flags (2 layers,
  dropout 0.1 always); those are our defaults too.

  Attributes:
    hidden_size: d, the encoder width. Must equal `encoder.hidden_size` when both are set.
    hidden_dim: units per direction of the BiLSTM channel; 0 means d / 2, the only width
      the model accepts (2 * hidden_dim must equal d).
    lstm_layers, drop_out_rate: the BiLSTM channel's layers and dropout (between its
      layers and on its output).
    gcn_layers, gcn_dropout: layers of SynGCN and SemGCN, dropout between them.
    attention_heads: heads of SemGCN's attention graph.
    prop_drop: dropout on the span and pair classifier inputs.
    size_embedding: width of the span size embedding.
    num_size_embeddings: rows of the size embedding table (sizes must be smaller).
    num_entity_types: span classes (None, target, opinion).
    num_sentiment_types: pair outputs (NEUTRAL, POSITIVE, NEGATIVE, INVALID).
    sen_filter_threshold: sigmoid threshold of a sentiment at decoding.
    max_decoded_spans: k, spans kept per sentence at decoding (see decoding.py).
    kl_weight: weight of the KL term in the total loss.
    kl_differentiable: let gradients flow through the KL term (released: no).
    graph_implementation: "dense" or "jraph" (see gcn.py).
    dtype: compute dtype name, "float32" or "bfloat16"; parameters stay float32.
    encoder: the DeBERTa-v2 config of the full model, None for the head alone.
    remat_policy: rematerialisation of the encoder's layers in the backward pass
      ("none", "full", "dots", "dots_no_batch"): memory for recomputation.
    layer_loop: how the encoder runs its layers ("auto", "scan", "unroll"; see deberta_v2.py).
  """

  hidden_size: int = 768
  hidden_dim: int = _DEFAULT["hidden_dim"]
  lstm_layers: int = _DEFAULT["lstm_layers"]
  drop_out_rate: float = _DEFAULT["drop_out_rate"]
  gcn_layers: int = _DEFAULT["gcn_layers"]
  gcn_dropout: float = _DEFAULT["gcn_dropout"]
  attention_heads: int = _DEFAULT["attention_heads"]
  prop_drop: float = _DEFAULT["prop_drop"]
  size_embedding: int = _DEFAULT["size_embedding"]
  num_size_embeddings: int = settings.NUM_SIZE_EMBEDDINGS
  num_entity_types: int = len(ENTITY_OUTPUTS)
  num_sentiment_types: int = len(SENTIMENT_OUTPUTS)
  sen_filter_threshold: float = _DEFAULT["sen_filter_threshold"]
  max_decoded_spans: int = _DEFAULT["max_decoded_spans"]
  kl_weight: float = _DEFAULT["kl_weight"]
  kl_differentiable: bool = _DEFAULT["kl_differentiable"]
  graph_implementation: str = _DEFAULT["graph_implementation"]
  dtype: str = _DEFAULT["dtype"]
  encoder: Optional[Any] = None  # DebertaV2Config; Any keeps this module free of the encoder
  remat_policy: str = _DEFAULT["remat_policy"]  # the encoder layers' rematerialisation (see deberta_v2.py)
  layer_loop: str = _DEFAULT["layer_loop"]  # scan or unroll the encoder's layers (see deberta_v2.py)

  def __post_init__(self):
    settings.check_fields(self, SETTING_NAMES)
    if self.hidden_dim == 0:
      object.__setattr__(self, "hidden_dim", self.hidden_size // 2)
    if 2 * self.hidden_dim != self.hidden_size:
      raise ValueError(f"2 * hidden_dim ({2 * self.hidden_dim}) must equal hidden_size ({self.hidden_size}): "
                       "the GCNs share one width for the encoder and BiLSTM features")
    if self.encoder is not None and self.encoder.hidden_size != self.hidden_size:
      raise ValueError(f"hidden_size {self.hidden_size} != encoder width {self.encoder.hidden_size}")
    if self.hidden_size % self.attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.attention_heads} heads")

  @property
  def compute_dtype(self):
    """The jnp dtype named by `dtype`."""
    return jnp.dtype(self.dtype)

  def runtime_rates(self) -> Dict[str, Array]:
    """This config's `RUNTIME_RATES` as float32 scalars, for `D2E2S.__call__(rates=...)`."""
    return {name: jnp.float32(getattr(self, name)) for name in RUNTIME_RATES}


def range_max_table(x: Array) -> Array:
  """Sparse table of range maxima: table[b, j, t] = max(x[b, t : t + 2**j]) (clipped).

  Args:
    x: [B, T, d].

  Returns:
    [B, L, T, d] with L = floor(log2(T)) + 1 (batch first, like every activation, so
    that it stays split with the batch on a mesh).
  """
  levels = [x]
  width = 1
  while 2 * width <= x.shape[1]:
    previous = levels[-1]
    # Entries whose window runs past T are never read by `range_max`; any value will do.
    shifted = jnp.concatenate([previous[:, width:], previous[:, -width:]], axis=1)
    levels.append(jnp.maximum(previous, shifted))
    width *= 2
  return jnp.stack(levels, axis=1)


def range_max(table: Array, start: Array, end: Array) -> Array:
  """max(x[b, start:end]) for [B, N] ranges, read from `range_max_table(x)`.

  Empty ranges (end <= start) return garbage; callers mask them.

  Returns:
    [B, N, d].
  """
  length = jnp.maximum(end - start, 1)
  level = jnp.zeros_like(length)
  for j in range(1, table.shape[1]):
    level = level + (length >= 2 ** j)
  end_start = jnp.maximum(end - 2 ** level, 0)
  # Per sentence (vmap): a gather with a batch dimension, which a batch-sharded mesh
  # partitions without gathering the table to the full batch.
  lookup = jax.vmap(lambda sentence, levels, starts: sentence[levels, starts])
  return jnp.maximum(lookup(table, level, start), lookup(table, level, end_start))


class ResidualBlock(nn.Module):
  """`LayerNorm(Linear(relu(Linear(x))))`, the released TIN's `residual_layer*` and
  `feature_fusion` (PyTorch Sequential indices 0, 2, 3 -> `linear_0`, `linear_2`, `norm_3`)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = torch_like_dense(self.features, self.dtype, name="linear_0")(x)
    x = torch_like_dense(self.features, self.dtype, name="linear_2")(jax.nn.relu(x))
    return nn.LayerNorm(epsilon=_LAYER_NORM_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                        use_fast_variance=False, name="norm_3")(x)


class Fusion(nn.Module):
  """The used part of the released TIN: two residual blocks, a BiLSTM and an MLP."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, syntactic: Array, semantic: Array, mask: Array) -> Array:
    """Fuses h + SynGCN(g) and h + SemGCN(g) into [B, T, d]."""
    syntactic = ResidualBlock(self.features, self.dtype, name="residual_layer2")(hidden + syntactic)
    semantic = ResidualBlock(self.features, self.dtype, name="residual_layer4")(hidden + semantic)
    fused = BiLSTM(self.features, 2, 0.0, self.dtype, name="lstm")(
        jnp.concatenate([syntactic, semantic], axis=-1), mask)
    return ResidualBlock(self.features, self.dtype, name="feature_fusion")(fused)


def self_attention_residual(features: Array, mask: Array) -> Array:
  """`softmax_keys(F F^T) @ F * query_mask + F`, no scaling and no parameters."""
  mask = mask.astype(bool)
  scores = jnp.einsum("bqd,bkd->bqk", features, features).astype(jnp.float32)
  scores = jnp.where(mask[:, None, :], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(features.dtype)
  attended = jnp.einsum("bqk,bkd->bqd", weights, features)
  return jnp.where(mask[..., None], attended, 0) + features


def kl_term(semantic_adjacency: Array, syntactic_adjacency: Array) -> Array:
  """`log(1 + 5 / |kl / 2|)` with `kl` the symmetric KL of the row softmaxes, summed.

  Args:
    semantic_adjacency: [B, T, T] P = A_h.
    syntactic_adjacency: [B, T, T] K = A.

  Returns:
    float32 scalar.
  """
  log_p = jax.nn.log_softmax(semantic_adjacency.astype(jnp.float32), axis=-1)
  log_k = jax.nn.log_softmax(syntactic_adjacency.astype(jnp.float32), axis=-1)
  kl = jnp.sum(jnp.exp(log_k) * (log_k - log_p)) + jnp.sum(jnp.exp(log_p) * (log_p - log_k))
  return jnp.log1p(5.0 / jnp.maximum(jnp.abs(kl / 2), 1e-12))


def _as_arrays(batch: Mapping[str, Any]) -> Dict[str, Array]:
  """jnp views of the batch, so that numpy arrays closed over by a jitted caller index
  correctly with traced indices."""
  return {key: jnp.asarray(value) for key, value in batch.items()}


class D2E2SHead(nn.Module):
  """D2E2S on top of any encoder's hidden states.

  `apply(variables, hidden, batch, deterministic)` returns the training outputs;
  `apply(variables, hidden, batch, method=D2E2SHead.predict)` decodes. `batch` holds the
  arrays of WORKSPACE.md's batch contract (pairs only for training). Intermediate
  features are sown into the "intermediates" collection for layer-by-layer parity checks.

  Attributes:
    config: the head configuration.
  """

  config: D2E2SConfig

  def setup(self):
    cfg = self.config
    dtype = cfg.compute_dtype
    self.lstm = BiLSTM(cfg.hidden_dim, cfg.lstm_layers, cfg.drop_out_rate, dtype)
    self.lstm_dropout = Dropout(cfg.drop_out_rate)
    self.syn_gcn = SynGCN(cfg.hidden_size, cfg.gcn_layers, cfg.gcn_dropout, cfg.graph_implementation, dtype)
    self.sem_gcn = SemGCN(cfg.hidden_size, cfg.attention_heads, cfg.gcn_layers, cfg.gcn_dropout,
                          cfg.graph_implementation, dtype)
    self.fusion = Fusion(cfg.hidden_size, dtype)
    # torch.nn.Embedding's N(0, 1) initialisation.
    self.size_embeddings = nn.Embed(cfg.num_size_embeddings, cfg.size_embedding, dtype=dtype,
                                    param_dtype=jnp.float32, embedding_init=nn.initializers.normal(1.0))
    self.entity_classifier = torch_like_dense(cfg.num_entity_types, dtype)
    self.senti_classifier = torch_like_dense(cfg.num_sentiment_types, dtype)
    self.prop_dropout = Dropout(cfg.prop_drop)

  def features(self, hidden: Array, batch: Mapping[str, Array], deterministic: bool,
               rates: Optional[Mapping[str, Array]] = None) -> Tuple[Array, Array]:
    """Steps 2-6 and 9: the [B, T, d] features the classifiers read, and the KL term."""
    cfg = self.config
    rates = rates or {}
    mask = batch["attention_mask"].astype(bool)
    hidden = hidden.astype(cfg.compute_dtype)
    edges = SyntacticEdges(batch["graph_senders"], batch["graph_receivers"], batch["graph_edge_mask"])
    syntactic_adjacency = edges.dense(hidden.shape[1])

    lstm_rate, gcn_rate = rates.get("drop_out_rate"), rates.get("gcn_dropout")
    channel = self.lstm_dropout(self.lstm(hidden, mask, deterministic, dropout_rate=lstm_rate),
                                deterministic=deterministic, rate=lstm_rate)
    syntactic = self.syn_gcn(channel, edges, deterministic, adjacency=syntactic_adjacency, dropout_rate=gcn_rate)
    semantic, _ = self.sem_gcn(channel, mask, deterministic, dropout_rate=gcn_rate)
    # Only the attention graph of SemGCN(h) reaches any output (the KL term).
    hidden_adjacency = self.sem_gcn.attention_adjacency(hidden, mask, deterministic)

    fused = self.fusion(hidden, syntactic, semantic, mask)
    features = self_attention_residual(fused, mask)

    kl = kl_term(hidden_adjacency, syntactic_adjacency)
    if not cfg.kl_differentiable:
      kl = jax.lax.stop_gradient(kl)
    for name, value in (("channel", channel), ("syntactic", syntactic), ("semantic", semantic),
                        ("semantic_adjacency", hidden_adjacency), ("fused", fused), ("features", features)):
      self.sow("intermediates", name, value)
    return features, kl

  def classify_spans(self, features: Array, batch: Mapping[str, Array], table: Array, deterministic: bool,
                     rate: Optional[Array] = None) -> Tuple[Array, Array, Array]:
    """Step 7: ([B, S, 3] logits, [B, S, d] span pools, [B, S, e] size embeddings)."""
    bounds = batch["span_token_bounds"]
    pool = range_max(table, bounds[..., 0], bounds[..., 1])
    pool = jnp.where(batch["span_mask"].astype(bool)[..., None], pool, 0)
    sizes = self.size_embeddings(batch["span_sizes"])
    context = jnp.broadcast_to(features[:, :1], pool.shape)
    inputs = jnp.concatenate([context, pool, sizes.astype(pool.dtype)], axis=-1)
    logits = self.entity_classifier(self.prop_dropout(inputs, deterministic=deterministic, rate=rate))
    return logits, pool, sizes

  def classify_pairs(self, table: Array, span_token_bounds: Array, pool: Array, sizes: Array,
                     pair_indices: Array, deterministic: bool, rate: Optional[Array] = None) -> Array:
    """Step 8: [B, P, 4] sentiment logits of ordered (head, tail) pairs of candidates."""
    # Per-sentence gathers (batch dimension kept, see range_max).
    take = jax.vmap(lambda values, indices: values[indices])
    head, tail = pair_indices[..., 0], pair_indices[..., 1]
    head_bounds, tail_bounds = take(span_token_bounds, head), take(span_token_bounds, tail)
    # The released context: positions strictly between the spans, empty when they touch
    # or overlap (its create_senti_mask).
    head_first = head_bounds[..., 1] < tail_bounds[..., 0]
    start = jnp.where(head_first, head_bounds[..., 1], tail_bounds[..., 1])
    end = jnp.where(head_first, tail_bounds[..., 0], head_bounds[..., 0])
    between = jnp.where((end > start)[..., None], range_max(table, start, end), 0)
    inputs = jnp.concatenate([between, take(pool, head), take(pool, tail),
                              take(sizes, head).astype(pool.dtype), take(sizes, tail).astype(pool.dtype)], axis=-1)
    return self.senti_classifier(self.prop_dropout(inputs, deterministic=deterministic, rate=rate))

  def __call__(self, hidden: Array, batch: Mapping[str, Array], deterministic: bool = True,
               rates: Optional[Mapping[str, Array]] = None) -> Dict[str, Array]:
    """Training forward pass.

    Args:
      hidden: [B, T, d] encoder states.
      batch: the batch-contract arrays, including `pair_indices`.
      deterministic: disables dropout when True (needs a "dropout" rng otherwise).
      rates: runtime dropout rates by `RUNTIME_RATES` name (`D2E2SConfig.runtime_rates`),
        overriding the config's; None uses the config's as compile-time constants.

    Returns:
      `span_logits` [B, S, 3], `pair_logits` [B, P, 4] and the scalar float32 `kl_term`.
    """
    batch = _as_arrays(batch)
    rates = rates or {}
    features, kl = self.features(hidden, batch, deterministic, rates)
    table = range_max_table(features)
    span_logits, pool, sizes = self.classify_spans(features, batch, table, deterministic, rates.get("prop_drop"))
    pair_logits = self.classify_pairs(table, batch["span_token_bounds"], pool, sizes, batch["pair_indices"],
                                      deterministic, rates.get("prop_drop"))
    return {"span_logits": span_logits.astype(jnp.float32), "pair_logits": pair_logits.astype(jnp.float32),
            "kl_term": kl}

  def predict(self, hidden: Array, batch: Mapping[str, Array], threshold: Optional[Array] = None) -> Dict[str, Array]:
    """Deterministic decoding with static shapes (see decoding.decode for the outputs).

    `threshold` (a runtime scalar) overrides the config's `sen_filter_threshold`.
    """
    batch = _as_arrays(batch)
    features, _ = self.features(hidden, batch, True)
    table = range_max_table(features)
    span_logits, pool, sizes = self.classify_spans(features, batch, table, True)
    span_mask = batch["span_mask"].astype(bool)
    if "example_mask" in batch:
      span_mask = span_mask & batch["example_mask"].astype(bool)[:, None]
    score_pairs = lambda pair_indices: self.classify_pairs(table, batch["span_token_bounds"], pool, sizes,
                                                           pair_indices, True)
    threshold = self.config.sen_filter_threshold if threshold is None else threshold
    decoded = decoding.decode(span_logits, span_mask, score_pairs, self.config.max_decoded_spans, threshold)
    decoded["span_logits"] = span_logits.astype(jnp.float32)
    return decoded


class D2E2S(nn.Module):
  """DeBERTa-v2/v3 encoder (`encoder`) followed by `D2E2SHead` (`head`).

  `apply(variables, batch, deterministic)` trains; `method=D2E2S.predict` decodes.

  Attributes:
    config: a `D2E2SConfig` whose `encoder` is set.
  """

  config: D2E2SConfig

  def setup(self):
    if self.config.encoder is None:
      raise ValueError("D2E2S needs config.encoder (a DebertaV2Config); use D2E2SHead for the head alone")
    from d2e2s_jax.models.deberta_v2 import DebertaV2Model  # the encoder module is optional for the head
    self.encoder = DebertaV2Model(self.config.encoder, dtype=self.config.compute_dtype,
                                  remat_policy=self.config.remat_policy, layer_loop=self.config.layer_loop)
    self.head = D2E2SHead(self.config)

  def encode(self, batch: Mapping[str, Array], deterministic: bool) -> Array:
    """[B, T, d] encoder states of `input_ids`."""
    return self.encoder(batch["input_ids"], batch["attention_mask"], deterministic=deterministic)

  def __call__(self, batch: Mapping[str, Array], deterministic: bool = True,
               rates: Optional[Mapping[str, Array]] = None) -> Dict[str, Array]:
    """Training outputs, as `D2E2SHead.__call__` (the encoder's dropout is its config's)."""
    return self.head(self.encode(batch, deterministic), batch, deterministic, rates)

  def predict(self, batch: Mapping[str, Array], threshold: Optional[Array] = None) -> Dict[str, Array]:
    """Decoded outputs, as `D2E2SHead.predict`."""
    return self.head.predict(self.encode(batch, True), batch, threshold)


def init_params(model: nn.Module, batch: Mapping[str, Any], rng: Array) -> Any:
  """A model's initial parameters (logically boxed) for a batch of the contract's keys.

  The one initialisation of the trainer (`create_train_state`) and the `Predictor`
  (abstractly, for the shapes and shardings to restore into): params and dropout keys
  split from `rng`, deterministic forward.
  """
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, _as_arrays(batch), deterministic=True)
  return variables["params"]

