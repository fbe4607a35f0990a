"""Tests for the readers, writers and parse alignment (d2e2s_jax.data.{readers,writers,parses})."""

import json

import pytest

from d2e2s_jax.data import parses, readers, writers
from d2e2s_jax.data.examples import DataError, Entity, Example, Triplet
from tests import test_data_support
from tests.test_data_support import staff_example, validate_heads

DATASETS = ("14lap", "14res", "15res", "16res")
SPLITS = ("train", "dev", "test")
# Sentences / triplets per split, from docs/d2e2s-reference.md.
SPLIT_SIZES = {
    ("14lap", "train"): (906, 1460), ("14lap", "dev"): (219, 346), ("14lap", "test"): (328, 543),
    ("14res", "train"): (1266, 2338), ("14res", "dev"): (310, 577), ("14res", "test"): (492, 994),
    ("15res", "train"): (605, 1013), ("15res", "dev"): (148, 249), ("15res", "test"): (322, 485),
    ("16res", "train"): (857, 1394), ("16res", "dev"): (210, 339), ("16res", "test"): (326, 514),
}
# The JSON files cut one sentence at a "#" (leaving an empty last word); the raw files
# keep it whole. The comparison must report it, once per split that holds it.
TOKENIZATION_DIFFERENCES = {("14res", "train"): 748, ("15res", "train"): 436, ("16res", "dev"): 100}

ALL_SPLITS = [(dataset, split) for dataset in DATASETS for split in SPLITS]


def _record(**overrides):
  record = {"tokens": ["the", "staff", "was", "horrible"],
            "entities": [{"type": "target", "start": 1, "end": 2}, {"type": "opinion", "start": 3, "end": 4}],
            "sentiments": [{"type": "NEGATIVE", "head": 0, "tail": 1}],
            "pos": [["the", "DT"], ["staff", "NN"], ["was", "VBD"], ["horrible", "JJ"]],
            "dependency": [["root", 0, 4], ["det", 2, 1], ["nsubj", 4, 2], ["cop", 4, 3]], "orig_id": "s0"}
  record.update(overrides)
  return {key: value for key, value in record.items() if value is not None}


@pytest.mark.parametrize("dataset,split", ALL_SPLITS)
def test_benchmark_sizes_and_both_sources_agree(shared_data_dir, dataset, split):
  from_json = readers.read_examples(readers.dataset_paths(shared_data_dir, dataset, split))
  from_text = readers.read_examples(readers.dataset_paths(shared_data_dir, dataset, split, "aste_v2"), "aste_v2")
  sentences, triplets = SPLIT_SIZES[(dataset, split)]
  for examples in (from_json, from_text):
    assert len(examples) == sentences and sum(len(e.triplets) for e in examples) == triplets
  assert all(example.has_parse for example in from_json)
  assert len({example.id for example in from_json}) == sentences
  differences = test_data_support.compare_datasets(from_json, from_text)
  expected = TOKENIZATION_DIFFERENCES.get((dataset, split))
  if expected is None:
    assert differences == []
  else:
    assert len(differences) == 1 and differences[0].startswith(f"sentence {expected} ")
    assert "tokens differ" in differences[0]
    assert from_json[expected].triplets == from_text[expected].triplets


@pytest.mark.parametrize("dataset,split", [("14lap", "dev"), ("16res", "test")])
@pytest.mark.parametrize("format_", ["d2e2s", "aste_v2"])
def test_benchmark_round_trip(shared_data_dir, tmp_path, dataset, split, format_):
  examples = readers.read_examples(readers.dataset_paths(shared_data_dir, dataset, split, format_), format_)
  path = tmp_path / f"{split}.out"
  writers.write_examples(examples, path, format_)
  again = readers.read_examples(path, format_)
  if format_ == "aste_v2":  # ids are "<file stem>:<line>"
    assert [e.id for e in again] == [f"{split}:{line}" for line in range(1, len(examples) + 1)]
    again = [Example(id=e.id, tokens=e.tokens, triplets=e.triplets) for e in examples]
  assert again == examples


def test_hand_made_round_trip_both_formats(tmp_path):
  examples = [staff_example(), Example(id="x:2", tokens=("", "good", "food"),
                                       triplets=(Triplet((2, 3), (1, 2), "POSITIVE"), Triplet((2, 3), (1, 2), "NEUTRAL")))]
  writers.write_examples(examples, tmp_path / "a.json", "d2e2s")
  assert readers.read_examples(tmp_path / "a.json") == examples
  writers.write_examples(examples, tmp_path / "x.txt", "aste_v2")
  text_examples = readers.read_examples(tmp_path / "x.txt", "aste_v2")
  assert [(e.tokens, e.triplets) for e in text_examples] == [(e.tokens, e.triplets) for e in examples]
  assert text_examples[1].id == "x:2"


def test_writer_refuses_a_word_the_text_format_cannot_hold(tmp_path):
  with pytest.raises(DataError, match=r"example 0 \(bad\): word 1 'a b'"):
    writers.write_examples([Example(id="bad", tokens=("x", "a b"))], tmp_path / "t.txt", "aste_v2")


JSON_ERRORS = [
    ("not json", "{", r"invalid JSON at line 1"),
    ("not a list", {"tokens": []}, r"expected a JSON list"),
    ("missing field", [_record(sentiments=None)], r"record 0: missing field\(s\) \['sentiments'\]"),
    ("empty sentence", [_record(tokens=[], entities=[], sentiments=[])], r"record 0: empty sentence"),
    ("span outside", [_record(entities=[{"type": "target", "start": 1, "end": 5},
                                        {"type": "opinion", "start": 3, "end": 4}])],
     r"record 0: entity 0 \[1, 5\) is empty or outside the sentence of 4 words"),
    ("empty span", [_record(entities=[{"type": "target", "start": 2, "end": 2},
                                      {"type": "opinion", "start": 3, "end": 4}])], r"entity 0 \[2, 2\) is empty"),
    ("unknown entity", [_record(entities=[{"type": "aspect", "start": 1, "end": 2},
                                          {"type": "opinion", "start": 3, "end": 4}])], r"unknown type 'aspect'"),
    ("unknown sentiment", [_record(sentiments=[{"type": "POS", "head": 0, "tail": 1}])], r"unknown type 'POS'"),
    ("missing entity", [_record(sentiments=[{"type": "NEGATIVE", "head": 0, "tail": 2}])],
     r"sentiment 0 tail 2 points at a missing entity"),
    ("swapped roles", [_record(sentiments=[{"type": "NEGATIVE", "head": 1, "tail": 0}])],
     r"head is entity 1 of type 'opinion'"),
    ("dependency out of range", [_record(dependency=[["root", 0, 4], ["det", 7, 1], ["nsubj", 4, 2], ["cop", 4, 3]])],
     r"dependency entry 1 \['det', 7, 1\] has an index outside"),
    ("two heads", [_record(dependency=[["root", 0, 4], ["det", 2, 1], ["nsubj", 4, 1], ["cop", 4, 3]])],
     r"word 1 of the parse has two heads"),
    ("missing head", [_record(dependency=[["root", 0, 4], ["det", 2, 1], ["cop", 4, 3]])], r"no head to word\(s\) \[2\]"),
    ("cycle", [_record(dependency=[["root", 0, 4], ["det", 2, 1], ["nsubj", 3, 2], ["cop", 2, 3]])], r"form a cycle"),
    ("bad entry", [_record(dependency=[["root", 0, "4"]])], r"dependency entry 0 is"),
    ("bad pos", [_record(pos=[["the"]])], r"'pos' must be"),
    ("bad id", [_record(orig_id=["s0"])], r"record 0: 'orig_id' must be a non-empty string or an integer"),
]


TEXT_ERRORS = [
    ("no separator", "the food", r"line 2: missing the '####'"),
    ("bad list", "the food####[([1], [0], 'POS'", r"line 2: cannot parse the triplet list"),
    ("unknown sentiment", "the food####[([1], [0], 'GOOD')]", r"line 2: triplet 0 has unknown sentiment 'GOOD'"),
    ("not contiguous", "a b c d####[([0, 2], [3], 'POS')]", r"aspect \[0, 2\] is not a contiguous"),
    ("outside", "a b####[([1], [2], 'NEG')]", r"opinion \[2, 3\) is empty or outside the sentence of 2 words"),
    ("empty span", "a b####[([], [1], 'NEG')]", r"aspect must be a non-empty list"),
    ("empty sentence", "####[]", r"line 2: empty sentence"),
]


@pytest.mark.parametrize("name,line,message", TEXT_ERRORS, ids=[case[0] for case in TEXT_ERRORS])
def test_text_errors_name_the_file_and_line(tmp_path, name, line, message):
  del name
  path = tmp_path / "bad.txt"
  path.write_text("good food####[([1], [0], 'POS')]\n" + line + "\n")
  with pytest.raises(DataError, match=message) as raised:
    readers.read_examples(path, "aste_v2")
  assert str(raised.value).startswith(f"{path}, line 2")


def test_invalid_utf8_and_missing_file(tmp_path):
  path = tmp_path / "latin.txt"
  path.write_bytes("caf\xe9 food####[]".encode("latin-1"))
  with pytest.raises(DataError, match=r"latin.txt: not valid UTF-8 at byte 3"):
    readers.read_examples(path, "aste_v2")
  with pytest.raises(DataError, match="cannot read the file"):
    readers.read_examples(tmp_path / "absent.json")
  with pytest.raises(ValueError, match="unknown dataset format"):
    readers.read_examples(path, "conll")


def test_skip_invalid_counts_and_returns_the_errors(tmp_path):
  path = tmp_path / "mixed.json"
  path.write_text(json.dumps([_record(), _record(tokens=[]), _record(orig_id="s2"),
                              _record(sentiments=[{"type": "NEGATIVE", "head": 0, "tail": 9}])]))
  with pytest.raises(DataError, match="record 1"):
    readers.read_examples(path)
  assert [e.id for e in readers.read_examples(path, skip_invalid=True)] == ["s0", "s2"]
  examples, errors = readers.read_examples_with_errors(path)
  assert len(examples) == 2 and [str(e).split(":")[0] for e in errors] == [f"{path}, record 1", f"{path}, record 3"]


# ------------------------------------------------------------------ predictions


def _released_prediction():
  """A record as the released decoder writes one: no id, no parse, any entity pair."""
  return {"tokens": ["the", "fresh", "juices", "are", "the", "best", "!"],
          "entities": [{"type": "target", "start": 2, "end": 3}, {"type": "opinion", "start": 1, "end": 2},
                       {"type": "target", "start": 1, "end": 3}, {"type": "opinion", "start": 5, "end": 6},
                       {"type": "opinion", "start": 6, "end": 7}],
          "sentiments": [{"type": "POSITIVE", "head": 2, "tail": 3, "score": 0.9},
                         {"type": "POSITIVE", "head": 0, "tail": 2, "score": 0.5},  # tail typed target
                         {"type": "INVALID", "head": 1, "tail": 3, "score": 1}]}  # head typed opinion


def test_read_predictions_accepts_what_a_decoder_writes(tmp_path):
  path = tmp_path / "predicted_test.json"
  path.write_text(json.dumps([_released_prediction(), dict(_released_prediction(), sentiments=[])]))
  scored, empty = readers.read_predictions(path)
  assert scored.id == "predicted_test:0" and not scored.has_parse
  assert scored.entities == (Entity("target", (2, 3)), Entity("opinion", (1, 2)), Entity("target", (1, 3)),
                             Entity("opinion", (5, 6)), Entity("opinion", (6, 7)))  # (6, 7) in no triplet
  assert scored.triplets == (Triplet((1, 3), (5, 6), "POSITIVE"), Triplet((2, 3), (1, 3), "POSITIVE"),
                             Triplet((1, 2), (5, 6), "INVALID"))
  assert scored.triplet_scores == (0.9, 0.5, 1.0)
  assert empty.triplets == () and empty.triplet_scores is None and len(empty.entities) == 5
  # The gold reader stays strict about the same file.
  with pytest.raises(DataError, match=r"record 0: sentiment 1 tail is entity 2 of type 'target', expected 'opinion'"):
    readers.read_examples(path)
  # A gold file reads as predictions too (every entity kept, no scores).
  gold_path = tmp_path / "gold.json"
  gold_path.write_text(json.dumps([_record()]))
  (predicted,) = readers.read_predictions(gold_path)
  (gold,) = readers.read_examples(gold_path)
  assert predicted.triplets == gold.triplets and predicted.triplet_scores is None and gold.entities is None
  assert predicted.entities == (Entity("target", (1, 2)), Entity("opinion", (3, 4))) and predicted.has_parse


def _with_sentiments(*sentiments):
  return [_released_prediction() | {"sentiments": list(sentiments)}]


PREDICTION_ERRORS = [case for case in JSON_ERRORS if case[0] != "swapped roles"] + [
    ("unknown name", _with_sentiments({"type": "GREAT", "head": 0, "tail": 1}), r"sentiment 0 has unknown type 'GREAT'"),
    ("score above 1", _with_sentiments({"type": "POSITIVE", "head": 0, "tail": 1, "score": 1.5}),
     r"record 0: sentiment 0 score 1.5 is not a number in \[0, 1\]"),
    ("score not a number", _with_sentiments({"type": "POSITIVE", "head": 0, "tail": 1, "score": "0.5"}),
     r"sentiment 0 score '0.5' is not a number"),
    ("score a boolean", _with_sentiments({"type": "POSITIVE", "head": 0, "tail": 1, "score": True}),
     r"sentiment 0 score True is not a number"),
    ("some scores", _with_sentiments({"type": "POSITIVE", "head": 0, "tail": 1, "score": 0.5},
                                     {"type": "NEGATIVE", "head": 0, "tail": 3}),
     r"sentiment 1 lacks a score, sentiment 0 has one"),
    ("later score", _with_sentiments({"type": "POSITIVE", "head": 0, "tail": 1},
                                     {"type": "NEGATIVE", "head": 0, "tail": 3, "score": 0.5}),
     r"sentiment 1 has a score, sentiment 0 does not"),
    ("index not int", _with_sentiments({"type": "POSITIVE", "head": "0", "tail": 1}),
     r"sentiment 0 head '0' points at a missing entity \(the record has 5\)"),
]


# Gold files through read_examples, prediction files through read_predictions.
READER_ERRORS = ([("gold",) + case for case in JSON_ERRORS] + [("predictions",) + case for case in PREDICTION_ERRORS])


@pytest.mark.parametrize("reader,name,content,message", READER_ERRORS, ids=[f"{c[0]}-{c[1]}" for c in READER_ERRORS])
def test_json_errors_name_the_file_and_record(tmp_path, reader, name, content, message):
  del name
  path = tmp_path / "bad.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  read = readers.read_examples if reader == "gold" else readers.read_predictions
  with pytest.raises(DataError, match=message) as raised:
    read(path)
  assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_predictions_round_trip(tmp_path):
  path = tmp_path / "in.json"
  path.write_text(json.dumps([_released_prediction(), dict(_released_prediction(), sentiments=[]),
                              _record(sentiments=[{"type": "INVALID", "head": 1, "tail": 1}])]))
  predictions = readers.read_predictions(path)
  parsed = predictions[2]
  assert parsed.has_parse and parsed.triplets == (Triplet((3, 4), (3, 4), "INVALID"),)
  unscored = Example(id="u", tokens=("a", "b"), triplets=(Triplet((0, 1), (1, 2), "NEUTRAL"),),
                     entities=(Entity("target", (0, 1)), Entity("opinion", (1, 2))))
  for examples in (predictions, [unscored]):
    writers.write_examples(examples, tmp_path / "out.json")
    again = readers.read_predictions(tmp_path / "out.json")
    assert [e.id for e in again] == [e.id for e in examples]  # `orig_id` is written
    assert again == examples
  assert "score" not in json.loads((tmp_path / "out.json").read_text())[0]["sentiments"][0]


def test_writer_points_sentiments_at_the_listed_entities(tmp_path):
  # (0, 1) is listed twice: a head prefers the target, a tail the opinion.
  example = Example(id="e", tokens=("a", "b", "c"),
                    triplets=(Triplet((0, 1), (0, 1), "POSITIVE"), Triplet((2, 3), (0, 1), "NEGATIVE")),
                    entities=(Entity("opinion", (0, 1)), Entity("target", (0, 1)), Entity("opinion", (2, 3))),
                    triplet_scores=(0.25, 0.75))
  record = writers.example_to_json_record(example)
  assert record["entities"] == [{"type": "opinion", "start": 0, "end": 1}, {"type": "target", "start": 0, "end": 1},
                                {"type": "opinion", "start": 2, "end": 3}]
  assert record["sentiments"] == [{"type": "POSITIVE", "head": 1, "tail": 0, "score": 0.25},
                                  {"type": "NEGATIVE", "head": 2, "tail": 0, "score": 0.75}]
  missing = Example(id="m", tokens=("a", "b"), triplets=(Triplet((0, 1), (1, 2), "POSITIVE"),),
                    entities=(Entity("target", (0, 1)),))
  with pytest.raises(DataError, match=r"out.json, example 1 \(m\): triplet 0 tail span \[1, 2\] is none of the "
                                      r"example's entities"):
    writers.write_examples([example, missing], tmp_path / "out.json")
  with pytest.raises(DataError, match=r"example 0 \(e\): triplet 0 sentiment 'INVALID' cannot be written"):
    writers.write_examples([Example(id="e", tokens=("a", "b"), triplets=(Triplet((0, 1), (1, 2), "INVALID"),))],
                           tmp_path / "out.txt", "aste_v2")


def test_example_scores_align_with_triplets():
  with pytest.raises(ValueError, match="example x: 1 triplet scores for 0 triplets"):
    Example(id="x", tokens=("a",), triplet_scores=(0.5,))
  assert Example(id="x", tokens=("a",), triplet_scores=()).triplet_scores is None


def test_json_record_without_parse_or_id(tmp_path):
  path = tmp_path / "plain.json"
  path.write_text(json.dumps([_record(pos=None, dependency=None, orig_id=None), _record(orig_id=17)]))
  example, numbered = readers.read_examples(path)
  assert example.id == "plain:0" and not example.has_parse and example.pos_tags is None
  assert numbered.id == "17" and numbered.has_parse


def test_parse_alignment_handles_split_dropped_and_restarted_words():
  tokens = ("the", "drinks", "(", "till", "8pm", ")", "built-in", ".", "!")
  parse_words = ("the", "drinks", "till", "8", "pm", "builtin", ".", "!")
  # Second segment ("!") restarts its indices at 1 after a second ROOT entry.
  dependency = (("ROOT", 0, 2), ("det", 2, 1), ("case", 5, 3), ("nummod", 5, 4), ("nmod", 2, 5),
                ("amod", 2, 6), ("punct", 2, 7), ("ROOT", 0, 1))
  validated = parses.validate_dependency([list(entry) for entry in dependency], len(parse_words), "f, record 0")
  assert validated == dependency
  assert parses.align_words(tokens, parse_words) == [0, 1, 3, 4, 4, 6, 7, 8]
  heads, relations = parses.word_level_parse(tokens, parse_words, dependency)
  # "8pm" takes the head of "pm" (its top word); brackets are outside the parse.
  assert heads == (2, 0, 0, 5, 2, 0, 2, 2, 0)
  assert relations == ("det", "ROOT", "_", "case", "nmod", "_", "amod", "punct", "ROOT")
  validate_heads(heads, "f")


class _FixedParser:
  """A stand-in spaCy pipeline that returns preset parses (no model download needed)."""

  def __init__(self, parses):
    import spacy  # pylint: disable=import-outside-toplevel
    self.vocab = spacy.blank("en").vocab
    self.parses = parses

  def __call__(self, doc):
    from spacy.tokens import Doc  # pylint: disable=import-outside-toplevel
    words = [token.text for token in doc]
    heads, deps, tags = self.parses[tuple(words)]
    return Doc(self.vocab, words=words, heads=heads, deps=deps, tags=tags)


def test_parse_with_spacy_writes_the_d2e2s_layout(tmp_path):
  words = ("the", "food", "is", "good", ".", "", "!")
  placeholder_words = ("the", "food", "is", "good", ".", "_", "!")
  # Two sentences: "the food is good ." and "_ !" (0-based absolute heads, as spaCy).
  nlp = _FixedParser({placeholder_words: ([1, 3, 3, 3, 3, 5, 5], ["det", "nsubj", "cop", "ROOT", "punct", "ROOT",
                                                                    "punct"], ["DT", "NN", "VBZ", "JJ", ".", "X", "."])})
  example = Example(id="raw:1", tokens=words, triplets=(Triplet((1, 2), (3, 4), "POSITIVE"),))
  (parsed,) = parses.parse_with_spacy([example], nlp)
  assert parsed.dependency == (("ROOT", 0, 4), ("det", 2, 1), ("nsubj", 4, 2), ("cop", 4, 3), ("punct", 4, 5),
                               ("ROOT", 0, 1), ("punct", 1, 2))
  assert parsed.heads == (2, 4, 4, 0, 4, 0, 6)
  assert parsed.relations == ("det", "nsubj", "cop", "ROOT", "punct", "ROOT", "punct")
  assert parsed.pos_tags == ("DT", "NN", "VBZ", "JJ", ".", "X", ".") and parsed.parse_words == words
  assert parsed.triplets == example.triplets and parsed.id == example.id
  writers.write_examples([parsed], tmp_path / "parsed.json", "d2e2s")
  assert readers.read_examples(tmp_path / "parsed.json") == [parsed]
