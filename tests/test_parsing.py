"""Tests of the offline dependency parser: gold docs, training, scoring, loading, parsing."""

import json
import pathlib
import subprocess
import sys

import pytest
import spacy
from spacy.tokens import Doc

from d2e2s_jax import parsing
from d2e2s_jax.data import readers, synthetic
from d2e2s_jax.data.examples import DataError, Example

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# "the food is good ." then "great !" as a second segment whose indices restart at 1.
_SEGMENTED = Example(
    id="hand:0", tokens=("the", "food", "is", "good", ".", "great", "!"),
    pos_tags=("DT", "NN", "VBZ", "JJ", ".", "JJ", "."),
    dependency=(("ROOT", 0, 4), ("det", 2, 1), ("nsubj", 4, 2), ("cop", 4, 3), ("punct", 4, 5),
                ("ROOT", 0, 1), ("punct", 1, 2)),
    parse_words=("the", "food", "is", "good", ".", "great", "!"),
    heads=(2, 4, 4, 0, 4, 0, 6), relations=("det", "nsubj", "cop", "ROOT", "punct", "ROOT", "punct"))
# The parse is on its own words ("8pm" split in two), not on the tokens; no tags.
_OWN_WORDS = Example(
    id="hand:1", tokens=("open", "till", "8pm"),
    dependency=(("ROOT", 0, 1), ("case", 3, 2), ("obl", 1, 3), ("dep", 3, 4)),
    parse_words=("open", "till", "8", "pm"), heads=(0, 3, 1), relations=("ROOT", "case", "obl"))


def test_examples_to_docs_round_trips_heads_labels_tags_and_segments():
  vocab = spacy.blank("en").vocab
  unparsed = Example(id="hand:2", tokens=("no", "parse"))
  empty_word = Example(id="hand:3", tokens=("a", "b"), dependency=(("ROOT", 0, 1), ("dep", 1, 2)),
                       parse_words=("a", ""))
  gold = parsing.examples_to_docs([_SEGMENTED, unparsed, _OWN_WORDS, empty_word], vocab)
  assert gold.example_indices == [0, 2]
  assert gold.skipped == {"no parse": 1, "empty word": 1}
  segmented, own_words = gold.docs
  assert [token.text for token in segmented] == list(_SEGMENTED.parse_words)
  assert [token.head.i for token in segmented] == [1, 3, 3, 3, 3, 5, 5]
  assert [token.dep_ for token in segmented] == ["det", "nsubj", "cop", "ROOT", "punct", "ROOT", "punct"]
  assert [token.tag_ for token in segmented] == list(_SEGMENTED.pos_tags)
  assert [(sentence.start, sentence.end) for sentence in segmented.sents] == [(0, 5), (5, 7)]
  assert [token.text for token in own_words] == ["open", "till", "8", "pm"]
  assert [token.head.i for token in own_words] == [0, 2, 0, 2]
  assert [token.dep_ for token in own_words] == ["ROOT", "case", "obl", "dep"]
  assert not own_words.has_annotation("TAG")


def test_examples_to_docs_converts_every_benchmark_parse(shared_data_dir):
  vocab = spacy.blank("en").vocab
  for dataset in ("14lap", "14res", "15res", "16res"):
    for split in ("train", "dev", "test"):
      examples = readers.read_examples(readers.dataset_paths(shared_data_dir, dataset, split))
      gold = parsing.examples_to_docs(examples, vocab)
      assert gold.skipped == {} and len(gold.docs) == len(examples)
      for doc, example in zip(gold.docs, examples):
        segments = sum(head == 0 for _, head, _ in example.dependency)
        assert len(list(doc.sents)) == segments, example.id


def test_training_sentences_drops_repeats_and_held_out_sentences():
  def example(words):
    return Example(id=words, tokens=tuple(words.split()))
  train = [example("a b"), example("c d"), example("a b"), example("e f")]
  kept, removed = parsing.training_sentences(train, held_out=[example("e f")])
  assert [kept_example.tokens for kept_example in kept] == [("a", "b"), ("c", "d")]
  assert removed == {"duplicate": 1, "held_out": 1}


class _StandIn:
  """A stand-in pipeline whose `pipe` returns preset parses for the given words."""

  def __init__(self, parses):
    self.vocab = spacy.blank("en").vocab
    self.parses = parses

  def pipe(self, docs, batch_size):
    del batch_size
    for doc in docs:
      words = [token.text for token in doc]
      heads, deps, tags = self.parses[tuple(words)]
      yield Doc(self.vocab, words=words, heads=heads, deps=deps, tags=tags)


def test_evaluate_parser_scores_the_gold_parse_100_and_counts_errors():
  gold = {tuple(_SEGMENTED.parse_words): ([1, 3, 3, 3, 3, 5, 5], ["det", "nsubj", "cop", "ROOT", "punct", "ROOT",
                                                                   "punct"], list(_SEGMENTED.pos_tags)),
          tuple(_OWN_WORDS.parse_words): ([0, 2, 0, 2], ["ROOT", "case", "obl", "dep"], ["VB", "IN", "CD", "NN"])}
  scores = parsing.evaluate_parser(_StandIn(gold), [_SEGMENTED, _OWN_WORDS])
  assert scores == {"uas": 100.0, "las": 100.0, "tag_acc": 100.0, "words": 11, "sentences": 2, "skipped": {}}
  # One wrong head ("." attached to "is"), one wrong label ("amod" for "det"), one wrong tag,
  # and a merged segment (the root of "great !" attached to "good"): 9/11 heads, 8/11 labels.
  wrong = {tuple(_SEGMENTED.parse_words): ([1, 3, 3, 3, 2, 3, 5], ["amod", "nsubj", "cop", "ROOT", "punct", "conj",
                                                                    "punct"], ["DT", "NN", "VBZ", "JJ", ".", "JJ",
                                                                               "NN"])}
  assert parsing.evaluate_parser(_StandIn(gold), [_OWN_WORDS])["tag_acc"] is None  # no gold tags
  scores = parsing.evaluate_parser(_StandIn(wrong), [_SEGMENTED])
  assert scores["words"] == 7
  assert scores["uas"] == pytest.approx(100 * 5 / 7) and scores["las"] == pytest.approx(100 * 4 / 7)
  assert scores["tag_acc"] == pytest.approx(100 * 6 / 7)


@pytest.fixture(scope="module")
def tiny_parser(tmp_path_factory):
  """A parser trained for a handful of steps on 40 synthetic sentences (seconds)."""
  splits = synthetic.generate_synthetic_splits(seed=1, sizes={"train": 40, "dev": 10})
  output = tmp_path_factory.mktemp("parser") / "tiny"
  trained = parsing.train_parser(splits["train"], splits["dev"], output, seed=3, max_steps=6, eval_frequency=6,
                                 width=32, depth=1)
  return trained, splits


def test_train_parser_saves_a_loadable_parser(tiny_parser):
  trained, splits = tiny_parser
  assert (trained.train_docs, trained.dev_docs, trained.skipped) == (40, 10, {})
  assert (trained.path / "config.cfg").is_file() and not list(trained.path.parent.glob(".tiny.*"))
  nlp = parsing.load_parser(trained.path)
  assert nlp.pipe_names == ["tok2vec", "tagger", "parser"]
  scores = parsing.evaluate_parser(nlp, splits["dev"])
  assert scores["words"] == sum(len(example.tokens) for example in splits["dev"])
  assert scores == parsing.evaluate_parser(trained.nlp, splits["dev"])


def test_train_parser_is_deterministic_and_replaces_a_pipeline(tiny_parser, tmp_path):
  trained, splits = tiny_parser
  output = tmp_path / "again"
  (output).mkdir()
  (output / "config.cfg").write_text("an older pipeline")
  again = parsing.train_parser(splits["train"], splits["dev"], output, seed=3, max_steps=6, eval_frequency=6,
                               width=32, depth=1)
  for name in ("tok2vec/model", "parser/model", "tagger/model"):
    assert (output / name).read_bytes() == (trained.path / name).read_bytes(), name
  assert sorted(path.name for path in tmp_path.iterdir()) == ["again"]
  del again


def test_train_parser_refuses_to_overwrite_other_directories(tmp_path):
  (tmp_path / "notes.txt").write_text("keep me")
  with pytest.raises(parsing.ParserError, match="not a spaCy pipeline directory"):
    parsing.train_parser([_SEGMENTED], [_SEGMENTED], tmp_path, max_steps=1)
  assert (tmp_path / "notes.txt").read_text() == "keep me"
  with pytest.raises(DataError, match="none of the 1 training examples"):
    parsing.train_parser([Example(id="x", tokens=("a",))], [_SEGMENTED], tmp_path / "new", max_steps=1)


def test_load_parser_loads_installed_pipelines_by_name(tiny_parser, monkeypatch):
  trained, _ = tiny_parser
  # Stands in for an installed package such as en_core_web_sm (none can be installed here).
  monkeypatch.setattr(spacy.util, "is_package", lambda name: name == "en_tiny_parser")
  real_load = spacy.load
  monkeypatch.setattr(spacy, "load", lambda name: real_load(trained.path) if name == "en_tiny_parser" else None)
  assert parsing.load_parser("en_tiny_parser").pipe_names == ["tok2vec", "tagger", "parser"]


def test_parse_sentences_parses_raw_text_and_word_lists(tiny_parser):
  trained, _ = tiny_parser
  examples = parsing.parse_sentences(trained.nlp, ["the pizza was  great.", ["the", "staff", "is", "rude", "."]],
                                     ids=["a", "b"])
  assert [example.id for example in examples] == ["a", "b"]
  assert examples[0].tokens == ("the", "pizza", "was", "great", ".")
  assert examples[1].tokens == ("the", "staff", "is", "rude", ".")
  for example in examples:
    assert example.parse_words == example.tokens and len(example.pos_tags) == len(example.tokens)
    assert len(example.heads) == len(example.tokens) and 0 in example.heads and not example.triplets
  assert parsing.parse_sentences(trained.nlp, [["ok"]])[0].id == "sentence:0"


def test_parse_sentences_rejects_empty_sentences(tiny_parser):
  trained, _ = tiny_parser
  with pytest.raises(DataError, match=r"sentence 1 \(b\): empty sentence"):
    parsing.parse_sentences(trained.nlp, ["fine", "   "], ids=["a", "b"])
  with pytest.raises(DataError, match="sentence 0 .*: empty sentence"):
    parsing.parse_sentences(trained.nlp, [[]])
  with pytest.raises(DataError, match="1 ids for 2 sentences"):
    parsing.parse_sentences(trained.nlp, ["a", "b"], ids=["x"])


def test_load_parser_errors_are_one_line(tmp_path):
  with pytest.raises(parsing.ParserError, match="no installed spaCy pipeline .*train_parser") as error:
    parsing.load_parser("no_such_pipeline_xyz")
  assert "\n" not in str(error.value)
  with pytest.raises(parsing.ParserError, match="no config.cfg"):
    parsing.load_parser(tmp_path)
  spacy.blank("en").to_disk(tmp_path / "blank")
  with pytest.raises(parsing.ParserError, match="has no dependency parser"):
    parsing.load_parser(tmp_path / "blank")
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "config.cfg").write_text("[nlp\nlang = ")
  with pytest.raises(parsing.ParserError, match="cannot be loaded") as error:
    parsing.load_parser(tmp_path / "broken")
  assert "\n" not in str(error.value)


def test_read_text_sentences_names_bad_lines(tmp_path):
  path = tmp_path / "raw.txt"
  path.write_text("The food was great .\n\n  fine service  \nbad####[]\n", encoding="utf-8")
  with pytest.raises(DataError, match=r"raw.txt, line 4: .*'####'"):
    parsing.read_text_sentences(path)
  sentences, numbers, errors = parsing.read_text_sentences(path, skip_invalid=True)
  assert sentences == ["The food was great .", "fine service"] and numbers == [1, 3] and len(errors) == 1
  path.write_bytes(b"caf\xe9\n")
  with pytest.raises(DataError, match="not valid UTF-8 at byte 3"):
    parsing.read_text_sentences(path)


def test_train_parser_entry_point_writes_metrics(shared_data_dir, tmp_path):
  output = tmp_path / "parser"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train_parser", f"--data_dir={shared_data_dir}", f"--output={output}",
       "--datasets=15res", "--max_steps=4", "--eval_frequency=4"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  metrics = json.loads(result.stdout)
  assert metrics == json.loads((output / "metrics.json").read_text())
  assert metrics["dev"]["15res"]["words"] > 0 and 0 <= metrics["dev"]["15res"]["uas"] <= 100
  assert set(metrics["test"]) == {"15res"} and metrics["train_sentences"] + metrics["removed"]["held_out"] + \
      metrics["removed"]["duplicate"] == 605
  assert parsing.load_parser(output).pipe_names == ["tok2vec", "tagger", "parser"]
  missing = subprocess.run(
      [sys.executable, "-m", "experiments.train_parser", f"--data_dir={tmp_path}", f"--output={output}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "cannot read" in missing.stderr
