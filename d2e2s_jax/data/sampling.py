"""Span and pair candidates of one sentence, for training and for evaluation.

Follows docs/d2e2s-reference.md ("Training", "Inference") and the released SpERT-style
sampler, with these deliberate choices:

* Candidate spans are every word span of 1..`max_span_size` words, ordered by size then
  start, as in the released code. Their token bounds cover exactly the pieces of their
  words (`word_span_to_token_bounds`).
* Training, positive spans: the distinct gold spans (the released code repeats a span
  once per entity record, i.e. once per triplet; duplicates only reweight the loss).
  Gold spans longer than `max_span_size` are still positives, as released. A span that
  is both an aspect and an opinion (3 sentences in the benchmark) appears once, labelled
  target: the batch has one label per span, and the released code's two contradictory
  copies of it cannot be expressed.
* Negative spans: the other candidates, `neg_entity_count` of them drawn without
  replacement (-1 = all, the released behaviour, kept in candidate order).
* Positive pairs: the distinct gold (aspect, opinion) pairs, multi-hot over
  `examples.SENTIMENT_OUTPUTS` when a pair has several sentiments.
* Negative pairs: every other ordered pair of distinct gold spans (target-target,
  opinion-target, ... as released), `neg_triple_count` of them (-1 = all).
* Evaluation: every candidate span, labelled with its gold type when known.

Randomness comes only from the `numpy.random.Generator` passed in, which batching seeds
from (seed, epoch, example index), so samples do not depend on batch order.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from d2e2s_jax.data.encoding import EncodedExample, word_span_to_token_bounds
from d2e2s_jax.data.examples import ENTITY_OUTPUTS, NO_ENTITY, OPINION, SENTIMENT_OUTPUTS, TARGET, Span, Triplet

# Span label ids (indices into ENTITY_OUTPUTS).
NONE_LABEL, TARGET_LABEL, OPINION_LABEL = (ENTITY_OUTPUTS.index(name) for name in (NO_ENTITY, TARGET, OPINION))
NUM_PAIR_OUTPUTS = len(SENTIMENT_OUTPUTS)


@dataclasses.dataclass(frozen=True)
class SentenceSample:
  """The candidates of one sentence (unpadded numpy arrays).

  Attributes:
    span_word_bounds: int32 [S, 2] word spans [start, end).
    span_token_bounds: int32 [S, 2] the same spans as sub-token positions [start, end).
    span_sizes: int32 [S] words per span.
    span_labels: int32 [S] 0 None, 1 target, 2 opinion.
    pair_indices: int32 [P, 2] (head, tail) indices into the spans.
    pair_labels: float32 [P, 4] multi-hot over SENTIMENT_OUTPUTS, all zero = None.
  """

  span_word_bounds: np.ndarray
  span_token_bounds: np.ndarray
  span_sizes: np.ndarray
  span_labels: np.ndarray
  pair_indices: np.ndarray
  pair_labels: np.ndarray

  @property
  def num_spans(self) -> int:
    return int(self.span_sizes.shape[0])

  @property
  def num_pairs(self) -> int:
    return int(self.pair_indices.shape[0])


def candidate_spans(num_words: int, max_span_size: int) -> List[Span]:
  """Every word span of 1..max_span_size words, by size then start (released order)."""
  return [(start, start + size) for size in range(1, max_span_size + 1) for start in range(num_words - size + 1)]


def gold_span_labels(triplets: Sequence[Triplet]) -> Dict[Span, int]:
  """Label of each distinct gold span; a span that is both types is a target."""
  labels: Dict[Span, int] = {}
  for triplet in triplets:
    labels.setdefault(triplet.opinion, OPINION_LABEL)
  for triplet in triplets:
    labels[triplet.aspect] = TARGET_LABEL
  return labels


def _ordered_gold_spans(triplets: Sequence[Triplet]) -> List[Span]:
  """Distinct gold spans in order of first mention (aspect before opinion)."""
  spans: Dict[Span, None] = {}
  for triplet in triplets:
    spans.setdefault(triplet.aspect)
    spans.setdefault(triplet.opinion)
  return list(spans)


def _draw(items: List, count: int, rng: np.random.Generator) -> List:
  """`count` items without replacement (all of them, in order, for -1 or count >= len)."""
  if count < 0 or count >= len(items):
    return list(items)
  chosen = np.sort(rng.choice(len(items), size=count, replace=False))
  return [items[index] for index in chosen]


def _finish(encoded: EncodedExample, spans: List[Span], labels: List[int], pairs: List[Tuple[int, int]],
            pair_labels: np.ndarray) -> SentenceSample:
  word_bounds = np.asarray(spans, dtype=np.int32).reshape(-1, 2)
  token_bounds = np.asarray([word_span_to_token_bounds(encoded.word_piece_bounds, *span) for span in spans],
                            dtype=np.int32).reshape(-1, 2)
  return SentenceSample(span_word_bounds=word_bounds, span_token_bounds=token_bounds,
                        span_sizes=(word_bounds[:, 1] - word_bounds[:, 0]).astype(np.int32),
                        span_labels=np.asarray(labels, dtype=np.int32),
                        pair_indices=np.asarray(pairs, dtype=np.int32).reshape(-1, 2),
                        pair_labels=pair_labels.astype(np.float32).reshape(-1, NUM_PAIR_OUTPUTS))


def train_sample(encoded: EncodedExample, *, max_span_size: int, neg_entity_count: int, neg_triple_count: int,
                 rng: np.random.Generator) -> SentenceSample:
  """Training candidates: positives first, then the drawn negatives (spans and pairs)."""
  triplets = encoded.triplets
  span_labels = gold_span_labels(triplets)
  positives = _ordered_gold_spans(triplets)
  negatives = [span for span in candidate_spans(encoded.num_words, max_span_size) if span not in span_labels]
  spans = positives + _draw(negatives, neg_entity_count, rng)
  labels = [span_labels.get(span, NONE_LABEL) for span in spans]

  index_of = {span: index for index, span in enumerate(positives)}
  positive_pairs: Dict[Tuple[int, int], np.ndarray] = {}
  for triplet in triplets:
    key = (index_of[triplet.aspect], index_of[triplet.opinion])
    positive_pairs.setdefault(key, np.zeros(NUM_PAIR_OUTPUTS, np.float32))[
        SENTIMENT_OUTPUTS.index(triplet.sentiment)] = 1.0
  negative_pairs = [(head, tail) for head in range(len(positives)) for tail in range(len(positives))
                    if head != tail and (head, tail) not in positive_pairs]
  negative_pairs = _draw(negative_pairs, neg_triple_count, rng)
  pairs = list(positive_pairs) + negative_pairs
  pair_labels = np.zeros((len(pairs), NUM_PAIR_OUTPUTS), np.float32)
  if positive_pairs:
    pair_labels[:len(positive_pairs)] = np.stack(list(positive_pairs.values()))
  return _finish(encoded, spans, labels, pairs, pair_labels)


def sample_sizes(encoded: EncodedExample, *, max_span_size: int, neg_entity_count: int, neg_triple_count: int,
                 train: bool) -> Tuple[int, int]:
  """(spans, pairs) that `train_sample` / `eval_sample` give this sentence, for any rng.

  The counts do not depend on the draw (min(count, available) negatives), so batching
  can size its buckets for a whole dataset before sampling.
  """
  candidates = candidate_spans(encoded.num_words, max_span_size)
  if not train:
    return len(candidates), 0
  span_labels = gold_span_labels(encoded.triplets)
  negatives = len(candidates) - sum(1 for span in candidates if span in span_labels)
  num_gold = len(span_labels)
  positive_pairs = {(t.aspect, t.opinion) for t in encoded.triplets}
  negative_pairs = num_gold * (num_gold - 1) - sum(1 for aspect, opinion in positive_pairs if aspect != opinion)

  def drawn(count: int, available: int) -> int:
    return available if count < 0 else min(count, available)

  return (num_gold + drawn(neg_entity_count, negatives),
          len(positive_pairs) + drawn(neg_triple_count, negative_pairs))


def eval_sample(encoded: EncodedExample, *, max_span_size: int) -> SentenceSample:
  """Evaluation candidates: every span up to max_span_size with its gold label; no pairs."""
  span_labels = gold_span_labels(encoded.triplets)
  spans = candidate_spans(encoded.num_words, max_span_size)
  labels = [span_labels.get(span, NONE_LABEL) for span in spans]
  return _finish(encoded, spans, labels, [], np.zeros((0, NUM_PAIR_OUTPUTS), np.float32))
