"""Tests for the triplet scorer and the `experiments.evaluate` entry point.

Expected numbers are computed by hand in the comments next to each case.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from d2e2s_jax import evaluation
from d2e2s_jax.data.examples import DataError, Entity, Example, Triplet

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
INVALID = "INVALID"


def _t(aspect, opinion, sentiment="POSITIVE"):
  return Triplet(aspect=aspect, opinion=opinion, sentiment=sentiment)


def _score(gold, predicted):
  """Scores position-aligned per-sentence triplet lists with a `TripletScorer`."""
  assert len(gold) == len(predicted)
  scorer = evaluation.TripletScorer()
  for gold_triplets, predicted_triplets in zip(gold, predicted):
    scorer.add(gold_triplets, predicted_triplets)
  return scorer.result()


# Three sentences: a partly right one with a duplicate prediction, one with no
# prediction, one with predictions but no gold.
GOLD = [
    [_t((0, 1), (3, 4)), _t((5, 7), (8, 9), "NEGATIVE")],
    [_t((2, 3), (0, 1), "NEUTRAL")],
    [],
]
PREDICTED = [
    [_t((0, 1), (3, 4)), _t((5, 7), (8, 9), "POSITIVE"), _t((0, 1), (3, 4))],
    [],
    [_t((1, 2), (4, 5)), _t((1, 2), (6, 7), "NEGATIVE")],
]


def test_hand_computed_triplet_aspect_opinion_scores():
  scores = _score(GOLD, PREDICTED)
  # Triplets: gold 2 + 1 = 3; predicted 2 (duplicate dropped) + 0 + 2 = 4; correct 1
  # (the second triplet of sentence 0 has the wrong sentiment).
  assert scores["triplet"] == evaluation.PRF(gold=3, predicted=4, correct=1)
  assert scores["triplet"].precision == pytest.approx(25.0)
  assert scores["triplet"].recall == pytest.approx(100.0 / 3)
  assert scores["triplet"].f1 == pytest.approx(2 * 25.0 * (100 / 3) / (25.0 + 100 / 3))  # 28.571...
  # Aspects: gold {(0,1),(5,7)}, {(2,3)} = 3; predicted {(0,1),(5,7)}, {}, {(1,2)} = 3;
  # correct 2 (sentiment does not matter for terms).
  assert scores["aspect"] == evaluation.PRF(gold=3, predicted=3, correct=2)
  assert scores["aspect"].f1 == pytest.approx(200.0 / 3)
  # Opinions: gold {(3,4),(8,9)}, {(0,1)} = 3; predicted {(3,4),(8,9)}, {}, {(4,5),(6,7)}
  # = 4; correct 2.
  assert scores["opinion"] == evaluation.PRF(gold=3, predicted=4, correct=2)
  assert scores["opinion"].precision == pytest.approx(50.0)
  assert scores["opinion"].recall == pytest.approx(200.0 / 3)
  assert scores["opinion"].f1 == pytest.approx(2 * 50 * (200 / 3) / (50 + 200 / 3))  # 57.142...


def test_no_predictions_gives_zero_precision_not_nan():
  scores = _score(GOLD, [[], [], []])
  for name in evaluation.SCORE_NAMES:
    prf = scores[name]
    assert prf.predicted == 0 and prf.correct == 0 and prf.gold == 3
    assert (prf.precision, prf.recall, prf.f1) == (0.0, 0.0, 0.0)


def test_no_gold_gives_zero_recall_not_nan():
  scores = _score([[], []], [[_t((0, 1), (2, 3))], []])
  prf = scores["triplet"]
  assert (prf.gold, prf.predicted, prf.correct) == (0, 1, 0)
  values = (prf.precision, prf.recall, prf.f1)
  assert values == (0.0, 0.0, 0.0) and not any(math.isnan(v) for v in values)


def test_empty_split_scores_zero():
  scores = _score([], [])
  assert scores["triplet"].as_dict() == {
      "precision": 0.0, "recall": 0.0, "f1": 0.0, "gold": 0, "predicted": 0, "correct": 0}


def test_perfect_prediction_scores_100_and_gold_duplicates_count_once():
  gold = [[_t((0, 1), (2, 3)), _t((0, 1), (2, 3))]]
  scores = _score(gold, [[_t((0, 1), (2, 3))]])
  assert scores["triplet"] == evaluation.PRF(gold=1, predicted=1, correct=1)
  assert scores["triplet"].f1 == pytest.approx(100.0)


def test_same_spans_with_two_sentiments_are_two_predictions():
  # A decoder can emit one triplet per sentiment above threshold for the same pair.
  scores = _score([[_t((0, 1), (2, 3))]], [[_t((0, 1), (2, 3)), _t((0, 1), (2, 3), "NEUTRAL")]])
  assert scores["triplet"] == evaluation.PRF(gold=1, predicted=2, correct=1)
  assert scores["aspect"] == evaluation.PRF(gold=1, predicted=1, correct=1)


def test_spans_from_a_decoder_as_lists_and_numpy_ints_still_match():
  np = pytest.importorskip("numpy")
  predicted = Triplet(aspect=[np.int32(0), np.int32(1)], opinion=(np.int64(2), 3), sentiment="POSITIVE")
  scores = _score([[_t((0, 1), (2, 3))]], [[predicted]])
  assert scores["triplet"].correct == 1


def test_scorer_counts_explicit_term_spans_outside_triplets():
  scorer = evaluation.TripletScorer()
  # The span classifier kept aspect (4, 5) but it formed no triplet: a false aspect.
  scorer.add([_t((0, 1), (2, 3))], [_t((0, 1), (2, 3))], predicted_aspects=[(0, 1), (4, 5)],
             predicted_opinions=[(2, 3)])
  result = scorer.result()
  assert scorer.num_sentences == 1
  assert result["aspect"] == evaluation.PRF(gold=1, predicted=2, correct=1)
  assert result["opinion"] == evaluation.PRF(gold=1, predicted=1, correct=1)


def test_non_triplet_prediction_is_a_type_error():
  scorer = evaluation.TripletScorer()
  with pytest.raises(TypeError, match="sentence 0 .predicted.: expected Triplet"):
    scorer.add([], [((0, 1), (2, 3), "POSITIVE")])


def _examples(triplet_lists, prefix="s"):
  return [
      Example(id=f"{prefix}{i}", tokens=tuple(f"w{j}" for j in range(10)), triplets=tuple(triplets))
      for i, triplets in enumerate(triplet_lists)
  ]


def test_score_aligns_examples_by_id_in_any_order():
  gold = _examples(GOLD)
  predicted = list(reversed(_examples(PREDICTED)))
  assert evaluation.score(gold, predicted) == _score(GOLD, PREDICTED)


def test_score_names_a_prediction_without_gold():
  predicted = _examples(PREDICTED) + [Example(id="extra", tokens=("a",))]
  with pytest.raises(DataError, match=r"pred.json: record 'extra' has no gold example in gold.json"):
    evaluation.score(_examples(GOLD), predicted, gold_source="gold.json", predicted_source="pred.json")


def test_score_names_a_gold_record_without_prediction():
  with pytest.raises(DataError, match=r"pred.json: no prediction for gold record 's2' of gold.json"):
    evaluation.score(_examples(GOLD), _examples(PREDICTED)[:2], gold_source="gold.json",
                     predicted_source="pred.json")


def test_score_rejects_repeated_ids_and_token_mismatch():
  gold = _examples(GOLD)
  with pytest.raises(DataError, match=r"pred.json: record 1 repeats id 's0'"):
    evaluation.score(gold, [gold[0], gold[0]], predicted_source="pred.json")
  changed = [Example(id=e.id, tokens=e.tokens[:-1]) for e in gold]
  with pytest.raises(DataError, match="record 's0' has different tokens"):
    evaluation.score(gold, changed)


def test_score_takes_a_predictions_terms_from_its_typed_entities():
  gold = [Example(id="s", tokens=("a", "b", "c", "d"), triplets=(_t((0, 1), (2, 3)),))]
  # The triplet pairs two targets; the entities say what the span classifier typed.
  prediction = Example(id="s", tokens=gold[0].tokens, triplets=(_t((0, 1), (1, 2)), _t((0, 1), (2, 3), INVALID)),
                       entities=(Entity("target", (0, 1)), Entity("target", (1, 2)), Entity("opinion", (2, 3)),
                                 Entity("opinion", (3, 4))))
  scores = evaluation.score(gold, [prediction])
  assert scores["triplet"] == evaluation.PRF(gold=1, predicted=2, correct=0)  # INVALID is a false positive
  assert scores["aspect"] == evaluation.PRF(gold=1, predicted=2, correct=1)  # (0, 1), (1, 2)
  assert scores["opinion"] == evaluation.PRF(gold=1, predicted=2, correct=1)  # (2, 3), (3, 4)
  # Without entities the terms are the triplets' spans: opinions (1, 2) and (2, 3).
  without = evaluation.score(gold, [Example(id="s", tokens=gold[0].tokens, triplets=prediction.triplets)])
  assert without["aspect"] == evaluation.PRF(gold=1, predicted=1, correct=1)
  assert without["opinion"] == evaluation.PRF(gold=1, predicted=2, correct=1)


def test_score_by_order_pairs_records_by_position():
  gold, predicted = _examples(GOLD), _examples(PREDICTED, prefix="other")
  assert evaluation.score(gold, predicted, align="order") == _score(GOLD, PREDICTED)
  with pytest.raises(DataError, match=r"^pred.json: 2 records but gold.json has 3 \(aligned by order"):
    evaluation.score(gold, predicted[:2], gold_source="gold.json", predicted_source="pred.json", align="order")
  with pytest.raises(DataError, match=r"^pred.json: record 0 has different tokens from the gold record in gold"):
    evaluation.score(gold, [Example(id="x", tokens=("a",))] + predicted[1:], predicted_source="pred.json",
                     align="order")
  with pytest.raises(ValueError, match="unknown alignment 'name'"):
    evaluation.score(gold, predicted, align="name")


def test_scores_as_dict_has_the_documented_keys():
  result = evaluation.scores_as_dict(_score(GOLD, PREDICTED))
  assert sorted(result) == ["aspect", "opinion", "triplet"]
  for value in result.values():
    assert sorted(value) == ["correct", "f1", "gold", "precision", "predicted", "recall"]
  json.dumps(result)  # plain JSON types only


def _run_evaluate(*args):
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], capture_output=True, text=True,
                        timeout=120, cwd=REPO_ROOT)


@pytest.fixture
def gold_and_predictions(tmp_path):
  from d2e2s_jax.data.writers import write_examples  # pylint: disable=import-outside-toplevel
  gold_path, predicted_path = tmp_path / "gold.json", tmp_path / "pred.json"
  write_examples(_examples(GOLD), gold_path, "d2e2s")
  write_examples(list(reversed(_examples(PREDICTED))), predicted_path, "d2e2s")
  return gold_path, predicted_path


def test_evaluate_cli_prints_the_scores_as_json(gold_and_predictions):
  gold_path, predicted_path = gold_and_predictions
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={predicted_path}")
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert printed == evaluation.scores_as_dict(_score(GOLD, PREDICTED))
  assert printed["triplet"]["precision"] == pytest.approx(25.0)
  assert (printed["opinion"]["gold"], printed["opinion"]["predicted"], printed["opinion"]["correct"]) == (3, 4, 2)


def test_evaluate_cli_reports_a_bad_record_in_one_line(gold_and_predictions):
  gold_path, predicted_path = gold_and_predictions
  records = json.loads(predicted_path.read_text())
  records[1]["sentiments"] = [{"type": "GREAT", "head": 0, "tail": 1}]
  predicted_path.write_text(json.dumps(records))
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={predicted_path}")
  assert result.returncode == 1 and result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f"error: {predicted_path}, record 1") and "GREAT" in lines[0]


def test_evaluate_cli_reports_a_prediction_missing_for_a_gold_record(gold_and_predictions):
  gold_path, predicted_path = gold_and_predictions
  records = json.loads(predicted_path.read_text())
  predicted_path.write_text(json.dumps([r for r in records if r["orig_id"] != "s1"]))
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={predicted_path}")
  assert result.returncode == 1
  assert result.stderr.strip() == f"error: {predicted_path}: no prediction for gold record 's1' of {gold_path}"


def test_evaluate_cli_reports_a_missing_file(gold_and_predictions, tmp_path):
  gold_path, _ = gold_and_predictions
  missing = tmp_path / "nothing.json"
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={missing}")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and str(missing) in lines[0]


def _entities(*typed_spans):
  return [{"type": entity_type, "start": start, "end": end} for entity_type, start, end in typed_spans]


def _sentiments(*rows):
  return [{"type": name, "head": head, "tail": tail, "score": score} for name, head, tail, score in rows]


TOKENS = [["the", "fresh", "juices", "are", "the", "best", "but", "service", "slow", "."],
          ["pasta", "was", "fine", "and", "bread", "."]]
# Released-style predictions: no ids (aligned by order), no parse, every entity the span
# classifier typed listed whether paired or not, and scores.
RELEASED_STYLE = [
    {"tokens": TOKENS[0],
     "entities": _entities(("target", 2, 3), ("target", 1, 3), ("opinion", 5, 6), ("target", 7, 8), ("opinion", 8, 9),
                           ("opinion", 1, 2)),  # "fresh" (1, 2) is in no triplet
     "sentiments": _sentiments(("POSITIVE", 1, 2, 0.9),  # correct
                               ("POSITIVE", 0, 1, 0.6),  # tail "fresh juices" is typed target: wrong
                               ("INVALID", 3, 4, 0.45),  # INVALID: a false positive
                               ("NEGATIVE", 3, 4, 0.8))},  # correct
    {"tokens": TOKENS[1],
     "entities": _entities(("target", 0, 1), ("opinion", 2, 3), ("target", 4, 5)),  # "bread" in no triplet
     "sentiments": _sentiments(("NEUTRAL", 0, 1, 0.7))},  # wrong sentiment
]


def test_evaluate_cli_scores_a_released_style_predictions_file(tmp_path):
  from d2e2s_jax.data.writers import write_examples  # pylint: disable=import-outside-toplevel
  gold_path, predicted_path = tmp_path / "gold.json", tmp_path / "predicted_test_epoch_63.json"
  write_examples([Example(id="g0", tokens=tuple(TOKENS[0]),
                          triplets=(_t((1, 3), (5, 6)), _t((7, 8), (8, 9), "NEGATIVE"))),
                  Example(id="g1", tokens=tuple(TOKENS[1]), triplets=(_t((0, 1), (2, 3)),))], gold_path)
  predicted_path.write_text(json.dumps(RELEASED_STYLE))
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={predicted_path}", "--align=order")
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  counts = {name: (value["gold"], value["predicted"], value["correct"]) for name, value in printed.items()}
  # Triplets: gold 2 + 1; predicted 4 + 1 (INVALID and the target-target pair included);
  # correct 2. Aspects (entities typed target): gold {(1,3),(7,8)}, {(0,1)}; predicted
  # {(2,3),(1,3),(7,8)}, {(0,1),(4,5)}; correct 3. Opinions (typed opinion): gold
  # {(5,6),(8,9)}, {(2,3)}; predicted {(5,6),(8,9),(1,2)}, {(2,3)}; correct 3.
  assert counts == {"triplet": (3, 5, 2), "aspect": (3, 5, 3), "opinion": (3, 4, 3)}
  assert printed["triplet"]["precision"] == pytest.approx(40.0)
  assert printed["triplet"]["recall"] == pytest.approx(200.0 / 3)
  assert printed["triplet"]["f1"] == pytest.approx(50.0)
  assert printed["aspect"]["f1"] == pytest.approx(75.0)
  assert printed["opinion"]["f1"] == pytest.approx(600.0 / 7)  # P 75, R 100
  # By id (the default) the id-less records are named, in one line.
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={predicted_path}")
  assert result.returncode == 1
  assert result.stderr.strip() == (f"error: {predicted_path}: record 'predicted_test_epoch_63:0' has no gold example "
                                   f"in {gold_path}")


BAD_PREDICTIONS = [
    ("score outside [0, 1]", {"score": 1.5}, "sentiment 0 score 1.5 is not a number in [0, 1]"),
    ("unknown sentiment", {"type": "GREAT"},
     "sentiment 0 has unknown type 'GREAT'; expected one of ('NEUTRAL', 'POSITIVE', 'NEGATIVE', 'INVALID')"),
    ("missing entity", {"tail": 6}, "sentiment 0 tail 6 points at a missing entity (the record has 3)"),
]


@pytest.mark.parametrize("name,change,message", BAD_PREDICTIONS, ids=[case[0] for case in BAD_PREDICTIONS])
def test_evaluate_cli_reports_a_bad_prediction_in_one_line(tmp_path, name, change, message):
  del name
  records = json.loads(json.dumps(RELEASED_STYLE))
  records[1]["sentiments"][0].update(change)
  gold_path, predicted_path = tmp_path / "gold.json", tmp_path / "pred.json"
  gold_path.write_text(json.dumps([{"tokens": tokens, "entities": [], "sentiments": []} for tokens in TOKENS]))
  predicted_path.write_text(json.dumps(records))
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={predicted_path}", "--align=order")
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.strip() == f"error: {predicted_path}, record 1: {message}"


def test_evaluate_cli_on_a_benchmark_split_against_itself(shared_data_dir):
  gold_path = shared_data_dir / "aste" / "14res" / "test_dep_triple_polarity_result.json"
  result = _run_evaluate(f"--gold={gold_path}", f"--predictions={gold_path}")
  assert result.returncode == 0, result.stderr
  triplet = json.loads(result.stdout)["triplet"]
  # The full split is scored (the released code would keep 480 of the 492 sentences).
  assert (triplet["gold"], triplet["predicted"], triplet["correct"]) == (994, 994, 994)
  assert triplet["f1"] == pytest.approx(100.0)


# ------------------------------------------------------------- integer codes


def _random_triplets(rng, count, low, high, sentiments=("NEUTRAL", "POSITIVE", "NEGATIVE", "INVALID")):
  triplets = []
  for _ in range(count):
    a, o = rng.integers(low, high, 2).tolist()
    triplets.append(_t((a, a + int(rng.integers(1, 3))), (o, o + int(rng.integers(1, 3))),
                       sentiments[rng.integers(len(sentiments))]))
  return triplets


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("low, high", [(0, 8), (-30, -20), (2**40, 2**40 + 8), (0, 2**40)])
def test_add_codes_counts_exactly_as_add(seed, low, high):
  np = pytest.importorskip("numpy")
  rng = np.random.default_rng(seed)
  codec = evaluation.TripletCodec.covering(np.array([low, high + 2]), ("NEUTRAL", "POSITIVE", "NEGATIVE", "INVALID"))
  by_objects, by_codes = evaluation.TripletScorer(), evaluation.TripletScorer()
  by_objects_terms, by_codes_terms = evaluation.TripletScorer(), evaluation.TripletScorer()
  for _ in range(12):
    predicted = _random_triplets(rng, int(rng.integers(0, 30)), low, high)
    # Gold: some predicted triplets (with repeats), some new ones, some the codec cannot
    # represent (outside its range, unknown sentiment): those can never match.
    gold = [predicted[i] for i in rng.integers(0, len(predicted), 3)] if predicted else []
    gold += _random_triplets(rng, 2, low, high) + _random_triplets(rng, 1, high + 5, high + 9)
    gold += _random_triplets(rng, 1, low, high, sentiments=("GREAT",))
    aspects = [t.aspect for t in _random_triplets(rng, 4, low, high)] + [t.aspect for t in gold[:2]]
    opinions = [t.opinion for t in _random_triplets(rng, 4, low, high)]
    codes = np.concatenate([codec.encode_triplets(predicted), codec.encode_triplets(predicted[:5])])
    rng.shuffle(codes)  # any order, repeats count once
    assert codec.triplets(codes) == set(predicted)
    by_objects.add(gold, predicted)
    by_codes.add_codes(gold, codes, codec)
    by_objects_terms.add(gold, predicted, predicted_aspects=aspects, predicted_opinions=opinions)
    by_codes_terms.add_codes(gold, codes, codec, predicted_aspects=codec.encode_spans(aspects),
                             predicted_opinions=list(codec.encode_spans(opinions)))
  assert by_codes.result() == by_objects.result()
  assert by_codes_terms.result() == by_objects_terms.result()
  assert by_codes.num_sentences == 12
  assert by_objects.result()["triplet"].correct > 0


def test_codec_round_trips_spans_and_triplets():
  np = pytest.importorskip("numpy")
  codec = evaluation.TripletCodec.covering(np.array([[3, 5], [4, 9]]), ("POSITIVE", "NEGATIVE"))
  assert (codec.offset, codec.base, codec.span_limit, codec.triplet_limit) == (3, 7, 49, 49 * 49 * 2)
  spans = {(3, 4), (5, 9), (9, 9)}
  codes = codec.encode_spans(list(spans) + [(3, 4), (2, 4), (3, 10)])  # the last two are out of range
  assert codes.dtype == np.int64 and np.all(np.diff(codes) > 0) and len(codes) == 3
  assert codec.spans(codes) == spans
  triplets = {_t((3, 4), (5, 9)), _t((3, 4), (5, 9), "NEGATIVE"), _t((5, 9), (3, 4))}
  codes = codec.encode_triplets(list(triplets) + [_t((3, 4), (5, 9), "NEUTRAL")])
  assert len(codes) == 3 and codec.triplets(codes) == triplets
  aspects, opinions, sentiments = codec.split_triplets(codes)
  assert codec.spans(aspects) == {(3, 4), (5, 9)} and sorted(sentiments.tolist()) == [0, 0, 1]
  assert evaluation.TripletCodec.covering(np.zeros((0, 2), np.int32), ("A",)).base == 1
  huge = evaluation.TripletCodec.covering(np.array([0, 2**40]), ("A",))
  assert huge.encode_triplets([_t((0, 2**40), (1, 2), "A")]).dtype == object
  assert huge.triplets(huge.encode_triplets([_t((0, 2**40), (1, 2), "A")])) == {_t((0, 2**40), (1, 2), "A")}


def test_codec_and_add_codes_reject_bad_input():
  np = pytest.importorskip("numpy")
  with pytest.raises(ValueError, match="base"):
    evaluation.TripletCodec(offset=0, base=0, sentiments=("A",))
  with pytest.raises(ValueError, match="distinct sentiment"):
    evaluation.TripletCodec(offset=0, base=3, sentiments=("A", "A"))
  codec = evaluation.TripletCodec(offset=0, base=3, sentiments=("POSITIVE",))
  scorer = evaluation.TripletScorer()
  with pytest.raises(ValueError, match="sentence 0 .predicted.: expected a 1-D array"):
    scorer.add_codes([], np.zeros((2, 2), np.int64), codec)
  with pytest.raises(TypeError, match="integer codes"):
    scorer.add_codes([], np.array([1.5]), codec)
  with pytest.raises(TypeError, match="sentence 0 .gold.: expected Triplet"):
    scorer.add_codes([((0, 1), (2, 3), "POSITIVE")], [], codec)
  scorer.add_codes([_t((0, 1), (1, 2))], [], codec)
  assert scorer.result()["triplet"] == evaluation.PRF(gold=1, predicted=0, correct=0)
