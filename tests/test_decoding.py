"""Jitted static-shape decoding against a plain numpy version of the released decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2e2s_jax.data.examples import Triplet
from d2e2s_jax.models import decoding

THRESHOLD = 0.4


def _random_case(seed, batch=4, candidates=12, none_bias=0.0):
  rng = np.random.default_rng(seed)
  span_logits = rng.standard_normal((batch, candidates, 3)).astype(np.float32)
  span_logits[..., 0] += none_bias
  span_mask = np.ones((batch, candidates), bool)
  span_mask[1, 7:] = False  # a shorter sentence
  span_mask[3] = False  # a padding row
  pair_table = rng.standard_normal((batch, candidates, candidates, 4)).astype(np.float32)
  starts = rng.integers(0, 20, (batch, candidates))
  bounds = np.stack([starts, starts + 1 + np.arange(candidates) % 3], -1).astype(np.int32)
  return span_logits, span_mask, pair_table, bounds


def _released_decoding(span_logits, span_mask, pair_table, bounds, allowed=None):
  """The released evaluator, written out plainly; `allowed` restricts the kept spans."""
  results = []
  for row in range(span_logits.shape[0]):
    types = span_logits[row].argmax(-1) * span_mask[row]
    kept = [i for i in np.nonzero(types)[0] if allowed is None or i in allowed[row]]
    triplets = set()
    for a in kept:
      for b in kept:
        if a == b:
          continue
        probs = 1 / (1 + np.exp(-pair_table[row, a, b]))
        for output in np.nonzero(probs >= THRESHOLD)[0]:
          triplets.add(Triplet(tuple(bounds[row, a]), tuple(bounds[row, b]), decoding.SENTIMENT_OUTPUTS[output]))
    results.append({Triplet(tuple(map(int, t.aspect)), tuple(map(int, t.opinion)), t.sentiment) for t in triplets})
  return results


def _jitted_decode(span_logits, span_mask, pair_table, max_spans):
  rows = jnp.arange(span_logits.shape[0])[:, None]

  @jax.jit
  def run(span_logits, span_mask, pair_table):
    score_pairs = lambda idx: pair_table[rows, idx[..., 0], idx[..., 1]]
    return decoding.decode(span_logits, span_mask, score_pairs, max_spans, THRESHOLD)

  return jax.tree.map(np.asarray, run(span_logits, span_mask, pair_table))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_spans", [12, 20])
def test_equals_released_decoding_when_at_most_k_spans_pass(seed, max_spans):
  span_logits, span_mask, pair_table, bounds = _random_case(seed)
  decoded = _jitted_decode(span_logits, span_mask, pair_table, max_spans)
  assert decoded["pair_indices"].shape == (4, max_spans * (max_spans - 1), 2)
  got = decoding.decoded_triplets(decoded, bounds)
  expected = _released_decoding(span_logits, span_mask, pair_table, bounds)
  assert got == expected
  assert got[3] == set() and any(got)


@pytest.mark.parametrize("seed", range(3))
def test_keeps_the_k_best_spans_when_more_pass(seed):
  max_spans = 4
  span_logits, span_mask, pair_table, bounds = _random_case(seed, none_bias=-2.0)
  probs = np.exp(span_logits) / np.exp(span_logits).sum(-1, keepdims=True)
  passing = (probs.argmax(-1) != 0) & span_mask
  assert (passing.sum(-1) > max_spans).any()
  ranking = np.where(passing, probs[..., 1:].max(-1), -1)
  allowed = [set(np.argsort(-ranking[row], kind="stable")[:max_spans]) & set(np.nonzero(passing[row])[0])
             for row in range(len(ranking))]

  decoded = _jitted_decode(span_logits, span_mask, pair_table, max_spans)
  got = decoding.decoded_triplets(decoded, bounds)
  assert got == _released_decoding(span_logits, span_mask, pair_table, bounds, allowed)
  full = _released_decoding(span_logits, span_mask, pair_table, bounds)
  assert all(g <= f for g, f in zip(got, full))
  assert any(g != f for g, f in zip(got, full))
  np.testing.assert_array_equal(decoded["span_valid"].sum(-1), np.minimum(passing.sum(-1), max_spans))


def test_drop_invalid_and_terms():
  span_logits, span_mask, pair_table, bounds = _random_case(5)
  decoded = _jitted_decode(span_logits, span_mask, pair_table, 12)
  with_invalid = decoding.decoded_triplets(decoded, bounds)
  without = decoding.decoded_triplets(decoded, bounds, keep_invalid=False)
  assert all(w == {t for t in f if t.sentiment != "INVALID"} for w, f in zip(without, with_invalid))
  terms = decoding.decoded_terms(decoded, span_mask, bounds)
  types = span_logits.argmax(-1) * span_mask
  for row, (aspects, opinions) in enumerate(terms):
    assert aspects == {tuple(map(int, bounds[row, i])) for i in np.nonzero(types[row] == 1)[0]}
    assert opinions == {tuple(map(int, bounds[row, i])) for i in np.nonzero(types[row] == 2)[0]}


def test_more_slots_than_candidates_pads():
  span_logits, span_mask, pair_table, bounds = _random_case(6, candidates=3)
  decoded = _jitted_decode(span_logits, span_mask, pair_table, 5)
  assert decoded["span_index"].shape == (4, 5)
  assert not decoded["span_valid"][:, 3:].any()
  assert decoding.decoded_triplets(decoded, bounds) == _released_decoding(span_logits, span_mask, pair_table, bounds)
