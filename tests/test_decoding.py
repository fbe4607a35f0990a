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


def _predicted(decoded, bounds, span_mask=None):
  """`decoding.host_predictions` of a batch (all candidates real unless `span_mask`)."""
  if span_mask is None:
    span_mask = np.ones(np.asarray(bounds).shape[:2], bool)
  return decoding.host_predictions(decoded, span_mask, bounds)


def _triplet_sets(decoded, bounds, keep_invalid=True):
  return [row.triplets(keep_invalid) for row in _predicted(decoded, bounds)]


def _term_sets(decoded, span_mask, bounds):
  return [row.terms() for row in _predicted(decoded, bounds, span_mask)]


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
  got = _triplet_sets(decoded, bounds)
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
  got = _triplet_sets(decoded, bounds)
  assert got == _released_decoding(span_logits, span_mask, pair_table, bounds, allowed)
  full = _released_decoding(span_logits, span_mask, pair_table, bounds)
  assert all(g <= f for g, f in zip(got, full))
  assert any(g != f for g, f in zip(got, full))
  np.testing.assert_array_equal(decoded["span_valid"].sum(-1), np.minimum(passing.sum(-1), max_spans))


def test_drop_invalid_and_terms():
  span_logits, span_mask, pair_table, bounds = _random_case(5)
  decoded = _jitted_decode(span_logits, span_mask, pair_table, 12)
  with_invalid = _triplet_sets(decoded, bounds)
  without = _triplet_sets(decoded, bounds, keep_invalid=False)
  assert all(w == {t for t in f if t.sentiment != "INVALID"} for w, f in zip(without, with_invalid))
  terms = _term_sets(decoded, span_mask, bounds)
  types = span_logits.argmax(-1) * span_mask
  for row, (aspects, opinions) in enumerate(terms):
    assert aspects == {tuple(map(int, bounds[row, i])) for i in np.nonzero(types[row] == 1)[0]}
    assert opinions == {tuple(map(int, bounds[row, i])) for i in np.nonzero(types[row] == 2)[0]}


def test_more_slots_than_candidates_pads():
  span_logits, span_mask, pair_table, bounds = _random_case(6, candidates=3)
  decoded = _jitted_decode(span_logits, span_mask, pair_table, 5)
  assert decoded["span_index"].shape == (4, 5)
  assert not decoded["span_valid"][:, 3:].any()
  assert _triplet_sets(decoded, bounds) == _released_decoding(span_logits, span_mask, pair_table, bounds)


# ------------------------------------------------------------------- host side
# The host conversion as it was before it was vectorised: the reference it must equal.


def _reference_decoded_triplets(decoded, span_word_bounds, keep_invalid=True):
  pair_indices = np.asarray(decoded["pair_indices"])
  sentiment_on = np.asarray(decoded["sentiment_on"])
  bounds = np.asarray(span_word_bounds)
  results = []
  for row in range(sentiment_on.shape[0]):
    triplets = set()
    for pair, output in zip(*np.nonzero(sentiment_on[row])):
      sentiment = decoding.SENTIMENT_OUTPUTS[output]
      if sentiment == "INVALID" and not keep_invalid:
        continue
      head, tail = pair_indices[row, pair]
      triplets.add(Triplet(aspect=tuple(int(x) for x in bounds[row, head]),
                           opinion=tuple(int(x) for x in bounds[row, tail]), sentiment=sentiment))
    results.append(triplets)
  return results


def _reference_decoded_terms(decoded, span_mask, span_word_bounds):
  span_type = np.argmax(np.asarray(decoded["span_probs"]), axis=-1)
  mask = np.asarray(span_mask, bool)
  bounds = np.asarray(span_word_bounds)
  results = []
  for row in range(span_type.shape[0]):
    spans = (set(), set())
    for candidate in np.nonzero(mask[row] & (span_type[row] != 0))[0]:
      spans[span_type[row, candidate] - 1].add(tuple(int(x) for x in bounds[row, candidate]))
    results.append(tuple(spans))
  return results


def _host_case(seed, density, batch=6, candidates=40, k=8, word_range=(0, 30), dtype=np.int32):
  """A host-side `decode` output with `density` of the sentiment outputs on.

  Word bounds come from a small range, so distinct candidates often share bounds and the
  same triplet arises from several pairs; rows 1 and 4 are padding rows.
  """
  rng = np.random.default_rng(seed)
  grid = decoding.ordered_pair_grid(k)
  span_index = np.stack([rng.permutation(candidates)[:k] for _ in range(batch)])
  pair_valid = np.ones((batch, len(grid)), bool)
  pair_valid[:, rng.integers(0, len(grid), 5)] = False
  pair_valid[[1, 4]] = False
  sentiment_on = (rng.random((batch, len(grid), 4)) < density) & pair_valid[..., None]
  span_probs = rng.dirichlet(np.ones(3), (batch, candidates)).astype(np.float32)
  low, high = word_range
  starts = rng.integers(low, high, (batch, candidates))
  bounds = np.stack([starts, starts + rng.integers(1, 4, (batch, candidates))], -1).astype(dtype)
  span_mask = rng.random((batch, candidates)) < 0.8
  span_mask[[1, 4]] = False
  sentiment_probs = np.where(sentiment_on, 0.5 + 0.5 * rng.random(sentiment_on.shape), 0.0).astype(np.float32)
  decoded = {"pair_indices": span_index[:, grid].astype(np.int32), "sentiment_on": sentiment_on,
             "sentiment_probs": sentiment_probs, "span_probs": span_probs,
             "span_type_all": span_probs.argmax(-1).astype(np.int32)}
  return decoded, span_mask, bounds


HOST_CASES = [
    # (density of "on" outputs, word bound range, bounds dtype)
    (1.0, (0, 30), np.int32),  # unselective: everything on
    (0.5, (0, 6), np.int32),  # many repeats of the same triplet
    (0.03, (0, 60), np.int64),  # typical
    (0.001, (0, 60), np.int32),  # trained: almost nothing on
    (0.0, (0, 30), np.int32),  # nothing on
    (0.3, (-50, -20), np.int64),  # negative word indices
    (0.3, (2**40, 2**40 + 40), np.int64),  # a large offset, small range: int64 codes
    (0.3, (0, 2**40), np.int64),  # a huge range: Python-int (object) codes
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("density, word_range, dtype", HOST_CASES)
def test_host_conversion_equals_the_reference_loop(seed, density, word_range, dtype):
  decoded, span_mask, bounds = _host_case(seed, density, word_range=word_range, dtype=dtype)
  for keep_invalid in (True, False):
    expected = _reference_decoded_triplets(decoded, bounds, keep_invalid)
    got = _triplet_sets(decoded, bounds, keep_invalid=keep_invalid)
    assert got == expected
    assert got[1] == got[4] == set()
    for row in got:
      for triplet in row:
        assert all(type(x) is int for x in triplet.aspect + triplet.opinion)  # pylint: disable=unidiomatic-typecheck
    if density > 0.1:
      assert any(t.sentiment == "INVALID" for row in expected for t in row) == keep_invalid
  expected_terms = _reference_decoded_terms(decoded, span_mask, bounds)
  assert _term_sets(decoded, span_mask, bounds) == expected_terms
  without_types = {key: value for key, value in decoded.items() if key != "span_type_all"}
  assert _term_sets(without_types, span_mask, bounds) == expected_terms
  assert not expected_terms[1][0] and not expected_terms[4][1]


@pytest.mark.parametrize("density, word_range, dtype", HOST_CASES)
def test_codes_and_scores_decode_to_the_reference(density, word_range, dtype):
  decoded, span_mask, bounds = _host_case(7, density, word_range=word_range, dtype=dtype)
  predictions = _predicted(decoded, bounds, span_mask)
  assert [row.codec.triplets(row.triplet_codes) for row in predictions] == _reference_decoded_triplets(decoded, bounds)
  for row, prediction in enumerate(predictions):
    codes = prediction.triplet_codes
    assert codes.ndim == 1 and np.all(codes[1:] > codes[:-1])  # distinct, ascending
    assert codes.dtype == (np.int64 if word_range[1] - word_range[0] < 2**12 else object)
    # Each triplet's score is the best probability among the pairs that give it.
    best = {}
    for pair, output in zip(*np.nonzero(decoded["sentiment_on"][row])):
      head, tail = decoded["pair_indices"][row, pair]
      triplet = Triplet(tuple(int(x) for x in bounds[row, head]), tuple(int(x) for x in bounds[row, tail]),
                        decoding.SENTIMENT_OUTPUTS[output])
      best[triplet] = max(best.get(triplet, 0.0), float(decoded["sentiment_probs"][row, pair, output]))
    assert dict(prediction.scored_triplets()) == best
    assert [t for t, _ in prediction.scored_triplets()] == sorted(best, key=lambda t: (t.aspect, t.opinion,
                                                                                       decoding.SENTIMENT_OUTPUTS.index(t.sentiment)))
  assert [p.terms() for p in predictions] == _reference_decoded_terms(decoded, span_mask, bounds)


def test_host_conversion_of_an_empty_batch():
  decoded = {"pair_indices": np.zeros((0, 6, 2), np.int32), "sentiment_on": np.zeros((0, 6, 4), bool),
             "sentiment_probs": np.zeros((0, 6, 4), np.float32), "span_type_all": np.zeros((0, 5), np.int32)}
  bounds = np.zeros((0, 5, 2), np.int32)
  assert _triplet_sets(decoded, bounds) == []
  assert _term_sets(decoded, np.zeros((0, 5), bool), bounds) == []


def test_jitted_decode_reports_candidate_types_and_the_host_fetch_suffices():
  span_logits, span_mask, pair_table, bounds = _random_case(2, none_bias=-1.0)

  @jax.jit
  def run(span_logits, span_mask, pair_table):
    rows = jnp.arange(span_logits.shape[0])[:, None]
    score_pairs = lambda idx: pair_table[rows, idx[..., 0], idx[..., 1]]
    return decoding.decode(span_logits, span_mask, score_pairs, 6, THRESHOLD)

  on_device = run(span_logits, span_mask, pair_table)
  full = jax.device_get(on_device)
  np.testing.assert_array_equal(full["span_type_all"], full["span_probs"].argmax(-1))
  assert full["span_type_all"].dtype == np.int32
  fetched = decoding.fetch_host_outputs(on_device)
  assert sorted(fetched) == sorted(decoding.HOST_KEYS)
  assert all(isinstance(value, np.ndarray) for value in fetched.values())
  assert _triplet_sets(fetched, bounds) == _reference_decoded_triplets(full, bounds)
  assert _term_sets(fetched, span_mask, bounds) == _reference_decoded_terms(full, span_mask, bounds)
  assert any(_triplet_sets(fetched, bounds))
  # An output without `span_type_all` (e.g. from an older predict function) fetches span_probs.
  older = {key: value for key, value in on_device.items() if key != "span_type_all"}
  assert sorted(decoding.fetch_host_outputs(older)) == ["pair_indices", "sentiment_on", "sentiment_probs", "span_probs"]


def _reference_evaluate(predict_step, examples, encoded, batch_config, mesh, planned):
  """The evaluation written plainly: full fetch, the reference loops, `TripletScorer.add`."""
  from d2e2s_jax import evaluation  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.data import batching  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.training import sharding  # pylint: disable=import-outside-toplevel
  results = [None] * len(encoded)
  for batch in batching.eval_batches(encoded, batch_config, planned):
    decoded = jax.device_get(predict_step(None, sharding.shard_batch(batch, mesh)))
    triplet_sets = _reference_decoded_triplets(decoded, batch["span_word_bounds"])
    terms = _reference_decoded_terms(decoded, batch["span_mask"], batch["span_word_bounds"])
    for row in np.nonzero(batch["example_mask"])[0]:
      results[int(batch["example_index"][row])] = (triplet_sets[row], *terms[row])
  scorer = evaluation.TripletScorer()
  for example, (triplets, aspects, opinions) in zip(examples, results):
    scorer.add(example.triplets, triplets, predicted_aspects=aspects, predicted_opinions=opinions)
  return evaluation.scores_as_dict(scorer.result()), results


@pytest.mark.parametrize("density", [1.0, 0.05])
def test_prediction_path_equals_the_reference_evaluation(tmp_path, density):
  """`prediction.predict` and `score` on a synthetic split with a fake predict step.

  The fake step pairs the candidates of the gold spans first and turns sentiments on at
  random, so that some predicted triplets and terms are correct.
  """
  from d2e2s_jax.training import config as config_lib  # pylint: disable=import-outside-toplevel
  from d2e2s_jax import prediction  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.training import sharding, trainer  # pylint: disable=import-outside-toplevel
  config = config_lib.TrainConfig(synthetic=True, synthetic_sizes=(8, 24, 4), dataset="synthetic",
                                  encoder="scratch", scratch_vocab_size=200, max_length=128, eval_batch_size=8)
  data = trainer.prepare_data(config, tmp_path)
  batch_config = config.batch_config(data.tokenizer, training=False)
  mesh = sharding.make_mesh(config.mesh)
  examples, encoded = data.examples["dev"], data.encoded["dev"]
  k = 6
  grid = decoding.ordered_pair_grid(k)

  def fake_predict_step(params, batch):
    del params
    batch = jax.device_get(batch)
    rows, candidates = batch["span_mask"].shape
    rng = np.random.default_rng(int(batch["example_index"].sum()) + 1000)
    span_index = np.zeros((rows, k), np.int32)
    for row in range(rows):
      gold_spans = set()
      if batch["example_mask"][row]:
        gold_spans = {span for t in examples[batch["example_index"][row]].triplets for span in (t.aspect, t.opinion)}
      bounds = [tuple(b) for b in batch["span_word_bounds"][row].tolist()]
      gold_first = [i for i in range(candidates) if bounds[i] in gold_spans and batch["span_mask"][row, i]][:k]
      rest = [i for i in rng.permutation(candidates) if i not in gold_first]
      span_index[row] = (gold_first + rest)[:k]
    sentiment_on = rng.random((rows, len(grid), 4)) < density
    sentiment_on &= batch["example_mask"][:, None, None]
    span_logits = rng.standard_normal((rows, candidates, 3)).astype(np.float32)
    span_probs = np.exp(span_logits) / np.exp(span_logits).sum(-1, keepdims=True)
    return {"pair_indices": jnp.asarray(span_index[:, grid]), "sentiment_on": jnp.asarray(sentiment_on),
            "span_probs": jnp.asarray(span_probs), "span_type_all": jnp.asarray(span_probs.argmax(-1)),
            "sentiment_probs": jnp.asarray(sentiment_on.astype(np.float32))}

  expected, expected_sets = _reference_evaluate(fake_predict_step, examples, encoded, batch_config, mesh, None)
  predicted = prediction.predict(fake_predict_step, None, encoded, batch_config, mesh)
  assert prediction.score(examples, predicted) == expected
  assert [(p.triplets(), *p.terms()) for p in predicted] == expected_sets
  assert expected["triplet"]["correct"] > 0 and expected["aspect"]["correct"] > 0
  assert expected["triplet"]["predicted"] > expected["triplet"]["correct"]
