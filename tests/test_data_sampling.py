"""Tests for d2e2s_jax.data.sampling: candidates, negatives, pairs, between ranges."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from d2e2s_jax.data import encoding, sampling
from d2e2s_jax.data.examples import SENTIMENTS, Example, Triplet
from tests.test_data_support import wordpiece_tokenizer

TOKENIZER = wordpiece_tokenizer()
WORDS = ["the", "staff", "horrible", "was", "abcd", "pizza", ".", "", "zzz", "good"]


@st.composite
def examples(draw, max_words=10, max_triplets=4, max_span=4):
  """Random sentences (multi-piece and [UNK] words) with random triplets."""
  num_words = draw(st.integers(1, max_words))
  tokens = tuple(draw(st.lists(st.sampled_from(WORDS), min_size=num_words, max_size=num_words)))

  def span():
    start = draw(st.integers(0, num_words - 1))
    return (start, draw(st.integers(start + 1, min(num_words, start + max_span))))

  triplets = tuple(Triplet(span(), span(), draw(st.sampled_from(SENTIMENTS)))
                   for _ in range(draw(st.integers(0, max_triplets))))
  return Example(id="random", tokens=tokens, triplets=triplets)


def _encode(example):
  return encoding.encode_example(example, TOKENIZER, max_length=128)


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(num_words=st.integers(1, 30), max_span_size=st.integers(1, 8))
def test_candidate_spans_are_every_span_up_to_the_limit(num_words, max_span_size):
  spans = sampling.candidate_spans(num_words, max_span_size)
  expected = {(start, end) for start in range(num_words) for end in range(start + 1, num_words + 1)
              if end - start <= max_span_size}
  assert len(spans) == len(set(spans)) and set(spans) == expected
  assert [end - start for start, end in spans] == sorted(end - start for start, end in spans)


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(example=examples(), max_span_size=st.integers(1, 5))
def test_gold_spans_are_candidates_with_exact_piece_bounds(example, max_span_size):
  encoded = _encode(example)
  sample = sampling.eval_sample(encoded, max_span_size=max_span_size)
  candidates = {tuple(bounds): index for index, bounds in enumerate(sample.span_word_bounds.tolist())}
  for triplet in example.triplets:
    for span in (triplet.aspect, triplet.opinion):
      if span[1] - span[0] <= max_span_size:
        assert span in candidates
        assert sample.span_labels[candidates[span]] != sampling.NONE_LABEL
      else:
        assert span not in candidates
  for (word_start, word_end), (token_start, token_end), size in zip(sample.span_word_bounds, sample.span_token_bounds,
                                                                    sample.span_sizes):
    pieces = encoded.word_piece_bounds[word_start:word_end]
    # The bounds cover exactly the pieces of the span's words.
    assert set(range(token_start, token_end)) == {p for start, end in pieces for p in range(start, end)}
    assert size == word_end - word_start


def test_train_sample_positives_negatives_and_pairs():
  example = Example(id="s", tokens=("the", "food", "was", "good", "but", "service", "slow"),
                    triplets=(Triplet((1, 2), (3, 4), "POSITIVE"), Triplet((5, 6), (6, 7), "NEGATIVE"),
                              Triplet((1, 2), (3, 4), "NEUTRAL")))
  encoded = _encode(example)
  sample = sampling.train_sample(encoded, max_span_size=3, neg_entity_count=-1, neg_triple_count=-1,
                                 rng=np.random.default_rng(0))
  spans = [tuple(bounds) for bounds in sample.span_word_bounds.tolist()]
  # Distinct gold spans first, in order of mention, then every other candidate.
  assert spans[:4] == [(1, 2), (3, 4), (5, 6), (6, 7)]
  assert sample.span_labels[:4].tolist() == [1, 2, 1, 2] and not sample.span_labels[4:].any()
  assert set(spans) == set(sampling.candidate_spans(7, 3)) and len(spans) == len(set(spans))
  pairs = [tuple(pair) for pair in sample.pair_indices.tolist()]
  assert pairs[:2] == [(0, 1), (2, 3)]
  # (NEUTRAL, POSITIVE, NEGATIVE, INVALID) multi-hot; the other ordered gold pairs are None.
  assert sample.pair_labels[:2].tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]
  assert set(pairs[2:]) == {(a, b) for a in range(4) for b in range(4) if a != b} - {(0, 1), (2, 3)}
  assert not sample.pair_labels[2:].any()


@pytest.mark.parametrize("neg_entity_count,neg_triple_count", [(0, 0), (3, 2), (5, 100)])
def test_negative_counts_are_drawn_without_replacement(neg_entity_count, neg_triple_count):
  example = Example(id="s", tokens=("a", "b", "c", "d", "a", "b"),
                    triplets=(Triplet((0, 1), (2, 3), "POSITIVE"), Triplet((4, 5), (5, 6), "NEUTRAL")))
  encoded = _encode(example)
  draws = [sampling.train_sample(encoded, max_span_size=2, neg_entity_count=neg_entity_count,
                                 neg_triple_count=neg_triple_count, rng=np.random.default_rng(seed))
           for seed in range(6)]
  available_spans, available_pairs = len(sampling.candidate_spans(6, 2)) - 4, 4 * 3 - 2
  for sample in draws:
    negatives = [tuple(bounds) for bounds in sample.span_word_bounds[4:].tolist()]
    assert len(negatives) == min(neg_entity_count, available_spans) == len(set(negatives))
    assert not {(0, 1), (2, 3), (4, 5), (5, 6)} & set(negatives)
    assert sample.num_pairs - 2 == min(neg_triple_count, available_pairs)
  # Same generator state, same draw; the draws vary across generators.
  again = sampling.train_sample(encoded, max_span_size=2, neg_entity_count=neg_entity_count,
                                neg_triple_count=neg_triple_count, rng=np.random.default_rng(0))
  assert np.array_equal(again.span_word_bounds, draws[0].span_word_bounds)
  if 0 < neg_entity_count < available_spans:
    assert len({sample.span_word_bounds.tobytes() for sample in draws}) > 1


def test_span_both_target_and_opinion_is_one_target_and_long_gold_spans_stay_positive():
  example = Example(id="s", tokens=("a", "b", "c", "d", "a", "b", "c"),
                    triplets=(Triplet((0, 1), (1, 2), "POSITIVE"), Triplet((2, 3), (0, 1), "NEGATIVE"),
                              Triplet((3, 7), (1, 2), "NEUTRAL")))
  encoded = _encode(example)
  train = sampling.train_sample(encoded, max_span_size=2, neg_entity_count=-1, neg_triple_count=-1,
                                rng=np.random.default_rng(0))
  labels = dict(zip(map(tuple, train.span_word_bounds.tolist()), train.span_labels.tolist()))
  assert labels[(0, 1)] == sampling.TARGET_LABEL and labels[(3, 7)] == sampling.TARGET_LABEL
  assert [tuple(b) for b in train.span_word_bounds.tolist()].count((0, 1)) == 1
  evaluation = sampling.eval_sample(encoded, max_span_size=2)
  assert (3, 7) not in map(tuple, evaluation.span_word_bounds.tolist()) and evaluation.num_pairs == 0

