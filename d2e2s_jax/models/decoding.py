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

The host side (`host_predictions`) turns the padded arrays into one `SentencePrediction`
per row: the distinct triplets packed into integers (`evaluation.TripletCodec`) with
their scores, and the aspect and opinion terms. It is vectorised: the "on" (row, pair,
sentiment) entries are gathered with numpy and repeats are dropped per row by sorting, so
its cost does not grow with a Python loop over the pairs (an unselective model early in
training turns on nearly all k * (k - 1) * 4 outputs). `TripletScorer.add_codes` scores
the codes without a Python object per prediction; `SentencePrediction.triplets` builds
`Triplet`s from the distinct codes only. `fetch_host_outputs` copies only the arrays the
host reads (`HOST_KEYS`) from the device.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Mapping, Set, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from d2e2s_jax import evaluation
from d2e2s_jax.data.examples import INVALID, SENTIMENT_OUTPUTS, Span, Triplet

Array = jax.Array

_INVALID = SENTIMENT_OUTPUTS.index(INVALID)

# The arrays of `decode`'s output that the host conversion reads.
HOST_KEYS = ("pair_indices", "sentiment_on", "sentiment_probs", "span_type_all")


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
    [B, P, 4], `span_probs` float32 [B, S, 3], and `span_type_all` int32 [B, S], the
    argmax of `span_probs` for every candidate (term scoring; not masked).
  """
  selected = select_spans(span_logits, span_mask, max_spans)
  pair_indices, pair_valid = candidate_pairs(selected)
  probs = jax.nn.sigmoid(pair_logit_fn(pair_indices).astype(jnp.float32))
  probs = jnp.where(pair_valid[..., None], probs, 0.0)
  span_probs = jax.nn.softmax(span_logits.astype(jnp.float32), axis=-1)
  return dict(
      selected,
      pair_indices=pair_indices,
      pair_valid=pair_valid,
      sentiment_probs=probs,
      sentiment_on=(probs >= threshold) & pair_valid[..., None],
      span_probs=span_probs,
      span_type_all=jnp.argmax(span_probs, axis=-1).astype(jnp.int32),
  )


def fetch_host_outputs(decoded: Mapping[str, Array]) -> Dict[str, np.ndarray]:
  """`jax.device_get` of only the arrays of `decode`'s output that the host reads.

  The `HOST_KEYS`; `span_probs` instead of `span_type_all` for an output without it.
  """
  keys = [key for key in HOST_KEYS if key in decoded]
  if "span_type_all" not in decoded:
    keys.append("span_probs")
  return jax.device_get({key: decoded[key] for key in keys})


@dataclasses.dataclass(frozen=True)
class SentencePrediction:
  """What the model predicts for one sentence, as `evaluation.TripletCodec` codes.

  Attributes:
    codec: the packing of the codes (covers the sentence's batch).
    triplet_codes: the distinct predicted triplets, ascending; those of the INVALID
      output included (the released evaluation keeps them: they can only be false
      positives).
    triplet_scores: float32, per code the sigmoid probability of its sentiment (the
      highest, should two pairs give the same triplet).
    aspect_codes, opinion_codes: the distinct span codes of every real candidate whose
      argmax is target / opinion, whether or not it was among the k kept for pairing
      (released term scoring).
  """

  codec: evaluation.TripletCodec
  triplet_codes: np.ndarray
  triplet_scores: np.ndarray
  aspect_codes: np.ndarray
  opinion_codes: np.ndarray

  def _valid(self, keep_invalid: bool) -> np.ndarray:
    if keep_invalid:
      return np.ones(self.triplet_codes.shape, bool)
    return self.codec.split_triplets(self.triplet_codes)[2] != _INVALID

  def scored_triplets(self, keep_invalid: bool = True) -> List[Tuple[Triplet, float]]:
    """(triplet, score) in code order (by aspect, opinion, sentiment)."""
    keep = self._valid(keep_invalid)
    return list(zip(self.codec.triplet_list(self.triplet_codes[keep]), self.triplet_scores[keep].tolist()))

  def triplets(self, keep_invalid: bool = True) -> Set[Triplet]:
    """The predicted `Triplet`s (spans of Python ints)."""
    return set(self.codec.triplet_list(self.triplet_codes[self._valid(keep_invalid)]))

  def terms(self) -> Tuple[Set[Span], Set[Span]]:
    """(aspect spans, opinion spans)."""
    return self.codec.spans(self.aspect_codes), self.codec.spans(self.opinion_codes)


def batch_codec(span_word_bounds: np.ndarray) -> evaluation.TripletCodec:
  """The codec (sentiments in `SENTIMENT_OUTPUTS` order) covering a batch's word bounds."""
  return evaluation.TripletCodec.covering(span_word_bounds, SENTIMENT_OUTPUTS)


def _group_edges(keys: np.ndarray, limit: int, num_groups: int) -> List[int]:
  """The num_groups + 1 edges of groups 0..num_groups-1 in ascending `group * limit + code` keys."""
  key_dtype = keys.dtype if keys.size else evaluation.TripletCodec.dtype_for(num_groups * limit)
  return np.searchsorted(keys, np.arange(num_groups + 1).astype(key_dtype) * limit).tolist()


def _split(items, edges: List[int]) -> list:
  return [items[start:end] for start, end in zip(edges[:-1], edges[1:])]


def _row_triplet_codes(decoded: Mapping[str, np.ndarray], span_word_bounds: np.ndarray,
                       codec: evaluation.TripletCodec) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """Per row, the distinct triplet codes (ascending) and the best score of each.

  Vectorised over the batch: the on (row, pair, sentiment) entries are gathered with
  numpy, packed, and sorted once by (row, code, -score).
  """
  on = np.asarray(decoded["sentiment_on"], bool)
  rows, pairs, outputs = np.nonzero(on)
  pair_indices = np.asarray(decoded["pair_indices"])
  bounds = np.asarray(span_word_bounds)
  aspects = bounds[rows, pair_indices[rows, pairs, 0]]
  opinions = bounds[rows, pair_indices[rows, pairs, 1]]
  codes = codec.triplet_codes(codec.span_codes(aspects[:, 0], aspects[:, 1]),
                              codec.span_codes(opinions[:, 0], opinions[:, 1]), outputs)
  scores = np.asarray(decoded["sentiment_probs"], np.float32)[rows, pairs, outputs]
  limit = codec.triplet_limit
  keys = rows.astype(evaluation.TripletCodec.dtype_for(on.shape[0] * limit)) * limit + codes
  order = np.argsort(-scores, kind="stable")  # then by key, stably: the best score first per key
  order = order[np.argsort(keys[order], kind="stable")]  # (argsort also sorts object-dtype codes)
  keys, scores = keys[order], scores[order]
  first = np.ones(keys.shape, bool)
  if keys.size:
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
  keys, scores = keys[first], scores[first]
  edges = _group_edges(keys, limit, on.shape[0])
  return _split((keys % limit).astype(codes.dtype), edges), _split(scores, edges)


def _row_term_codes(decoded: Mapping[str, np.ndarray], span_mask: np.ndarray, span_word_bounds: np.ndarray,
                    codec: evaluation.TripletCodec) -> List[np.ndarray]:
  """The distinct span codes of row 0's aspects, row 0's opinions, row 1's aspects, ..."""
  if "span_type_all" in decoded:
    span_type = np.asarray(decoded["span_type_all"])
  else:
    span_type = np.argmax(np.asarray(decoded["span_probs"]), axis=-1)
  rows, candidates = np.nonzero(np.asarray(span_mask, bool) & (span_type != 0))
  bounds = np.asarray(span_word_bounds)[rows, candidates]
  groups = 2 * rows + span_type[rows, candidates] - 1
  limit, num_groups = codec.span_limit, 2 * span_type.shape[0]
  codes = codec.span_codes(bounds[:, 0], bounds[:, 1])
  keys = evaluation.unique_codes(groups.astype(evaluation.TripletCodec.dtype_for(num_groups * limit)) * limit + codes)
  return _split((keys % limit).astype(codes.dtype), _group_edges(keys, limit, num_groups))


def host_predictions(decoded: Mapping[str, np.ndarray], span_mask: np.ndarray,
                     span_word_bounds: np.ndarray) -> List[SentencePrediction]:
  """Turns `decode`'s arrays (fetched to the host) into one `SentencePrediction` per row.

  One triplet (span a, span b, sentiment) per on entry of `sentiment_on`, repeats once.
  The cost does not grow with a Python loop over pairs (an unselective model early in
  training turns on nearly all k * (k - 1) * 4 outputs): everything is numpy until a
  caller asks for `Triplet` objects.

  Args:
    decoded: `decode`'s output as numpy arrays (at least `HOST_KEYS`).
    span_mask: bool [B, S] real candidates.
    span_word_bounds: int [B, S, 2] word bounds [start, end) of the candidates.

  Returns:
    B predictions (padding rows included: they predict nothing).
  """
  codec = batch_codec(span_word_bounds)
  triplets, scores = _row_triplet_codes(decoded, span_word_bounds, codec)
  terms = _row_term_codes(decoded, span_mask, span_word_bounds, codec)
  return [SentencePrediction(codec, codes, row_scores, aspects, opinions)
          for codes, row_scores, aspects, opinions in zip(triplets, scores, terms[0::2], terms[1::2])]
