"""Decoding span and pair scores into triplets: static shapes inside jit, sets on the host.

The released decoding (reference page, "Inference"): keep every candidate span whose
argmax is not None, classify every ordered pair of kept spans (a != b), and emit one
triplet (span a, span b, sentiment) for each sentiment output whose sigmoid is at least
`sen_filter_threshold`, duplicates dropped. Entity types do not take part in the triplet.

Under jit the number of kept spans must be static, so we keep at most
`max_decoded_spans` (k) spans per sentence, ranked by the span's highest non-None
probability, and score the k * (k - 1) ordered pairs of them. When no more than k spans
pass, the result is exactly the released one; when more pass, the k highest-ranked are
kept and the triplets are those of the released decoding restricted to them (a subset of
the released triplets). Ties in the ranking go to the lower candidate index
(`jax.lax.top_k`).

The host side (`decoded_triplets`, `decoded_terms`) turns the padded arrays into
`Triplet` sets and term span sets for `d2e2s_jax.evaluation.TripletScorer`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Set, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from d2e2s_jax.data.examples import Span, Triplet

Array = jax.Array

# Sentiment outputs of the pair classifier: types.json's order without the implicit None.
SENTIMENT_OUTPUTS = ("NEUTRAL", "POSITIVE", "NEGATIVE", "INVALID")
ENTITY_OUTPUTS = ("None", "target", "opinion")


def select_spans(span_logits: Array, span_mask: Array, max_spans: int) -> Dict[str, Array]:
  """Keeps up to `max_spans` spans whose argmax is not None, best first.

  Args:
    span_logits: [B, S, 3] span classifier logits (None, target, opinion).
    span_mask: [B, S] real candidates (padding rows all False).
    max_spans: k, a static int.

  Returns:
    `span_index` int32 [B, k] candidate indices, `span_valid` bool [B, k],
    `span_type` int32 [B, k] (1 target, 2 opinion; 0 where invalid), `span_score`
    float32 [B, k] the ranking probability.
  """
  probs = jax.nn.softmax(span_logits.astype(jnp.float32), axis=-1)
  span_type = jnp.argmax(probs, axis=-1)
  kept = (span_type != 0) & span_mask.astype(bool)
  score = jnp.max(probs[..., 1:], axis=-1)
  k = min(max_spans, span_logits.shape[1])
  top_score, top_index = jax.lax.top_k(jnp.where(kept, score, -1.0), k)
  valid = top_score >= 0
  if k < max_spans:  # fewer candidates than k: pad to the static width
    pad = max_spans - k
    top_score = jnp.pad(top_score, ((0, 0), (0, pad)), constant_values=-1.0)
    top_index = jnp.pad(top_index, ((0, 0), (0, pad)))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
  top_type = jnp.take_along_axis(span_type, top_index, axis=1)
  return {
      "span_index": top_index.astype(jnp.int32),
      "span_valid": valid,
      "span_type": jnp.where(valid, top_type, 0).astype(jnp.int32),
      "span_score": jnp.where(valid, top_score, 0.0),
  }


def ordered_pair_grid(max_spans: int) -> np.ndarray:
  """The k * (k - 1) ordered pairs (a, b), a != b, of slots 0..k-1, as int32 [P, 2]."""
  return np.array([(a, b) for a in range(max_spans) for b in range(max_spans) if a != b],
                  np.int32).reshape(-1, 2)


def candidate_pairs(selected: Mapping[str, Array]) -> Tuple[Array, Array]:
  """All ordered pairs of the selected spans.

  Returns:
    (`pair_indices` int32 [B, P, 2] indices into the candidate (S) axis,
    `pair_valid` bool [B, P] both spans valid), P = k * (k - 1).
  """
  grid = ordered_pair_grid(selected["span_index"].shape[1])
  pair_indices = selected["span_index"][:, grid]  # [B, P, 2]
  pair_valid = selected["span_valid"][:, grid].all(axis=-1)
  return pair_indices, pair_valid


def decode(span_logits: Array, span_mask: Array, pair_logit_fn: Callable[[Array], Array],
           max_spans: int, threshold: float) -> Dict[str, Array]:
  """Selects spans, scores their pairs and thresholds the sentiments; static shapes.

  Args:
    span_logits: [B, S, 3] span classifier logits.
    span_mask: [B, S] real candidates of real rows.
    pair_logit_fn: maps `pair_indices` int32 [B, P, 2] (into the S axis) to [B, P, 4]
      sentiment logits (the head's pair classifier).
    max_spans: k.
    threshold: `sen_filter_threshold`; a sentiment is on when sigmoid >= threshold.

  Returns:
    The `select_spans` arrays plus `pair_indices` [B, P, 2] (S axis), `pair_valid` [B, P],
    `sentiment_probs` float32 [B, P, 4] (zero where invalid), `sentiment_on` bool
    [B, P, 4], and `span_probs` float32 [B, S, 3] for term scoring.
  """
  selected = select_spans(span_logits, span_mask, max_spans)
  pair_indices, pair_valid = candidate_pairs(selected)
  probs = jax.nn.sigmoid(pair_logit_fn(pair_indices).astype(jnp.float32))
  probs = jnp.where(pair_valid[..., None], probs, 0.0)
  return dict(
      selected,
      pair_indices=pair_indices,
      pair_valid=pair_valid,
      sentiment_probs=probs,
      sentiment_on=(probs >= threshold) & pair_valid[..., None],
      span_probs=jax.nn.softmax(span_logits.astype(jnp.float32), axis=-1),
  )


def decoded_triplets(decoded: Mapping[str, np.ndarray], span_word_bounds: np.ndarray,
                     keep_invalid: bool = True) -> List[Set[Triplet]]:
  """Turns `decode`'s arrays (fetched to the host) into one `Triplet` set per batch row.

  Args:
    decoded: the output of `decode`, as numpy arrays.
    span_word_bounds: int [B, S, 2] word bounds [start, end) of the candidates.
    keep_invalid: keep triplets of the INVALID output, as the released code does (they
      can only be false positives: the data has no INVALID triplet).

  Returns:
    B sets of `Triplet(aspect=span a, opinion=span b, sentiment)`.
  """
  pair_indices = np.asarray(decoded["pair_indices"])
  sentiment_on = np.asarray(decoded["sentiment_on"])
  bounds = np.asarray(span_word_bounds)
  results = []
  for row in range(sentiment_on.shape[0]):
    triplets = set()
    for pair, output in zip(*np.nonzero(sentiment_on[row])):
      sentiment = SENTIMENT_OUTPUTS[output]
      if sentiment == "INVALID" and not keep_invalid:
        continue
      head, tail = pair_indices[row, pair]
      triplets.add(Triplet(aspect=tuple(int(x) for x in bounds[row, head]),
                           opinion=tuple(int(x) for x in bounds[row, tail]), sentiment=sentiment))
    results.append(triplets)
  return results


def decoded_terms(decoded: Mapping[str, np.ndarray], span_mask: np.ndarray,
                  span_word_bounds: np.ndarray) -> List[Tuple[Set[Span], Set[Span]]]:
  """(aspect spans, opinion spans) per row: every real candidate whose argmax is target /
  opinion, whether or not it was among the k kept for pairing (released term scoring)."""
  span_type = np.argmax(np.asarray(decoded["span_probs"]), axis=-1)
  mask = np.asarray(span_mask, bool)
  bounds = np.asarray(span_word_bounds)
  results = []
  for row in range(span_type.shape[0]):
    spans: Sequence[Set[Span]] = (set(), set())
    for candidate in np.nonzero(mask[row] & (span_type[row] != 0))[0]:
      spans[span_type[row, candidate] - 1].add(tuple(int(x) for x in bounds[row, candidate]))
    results.append(tuple(spans))
  return results
