"""Tests for the synthetic review dataset: determinism, validity, disjoint splits, labels."""

import collections
import json
import os
import pathlib
import subprocess
import sys

import pytest

from d2e2s_jax.data import synthetic
from d2e2s_jax.data.examples import SENTIMENTS
from tests.test_data_support import validate_heads
from d2e2s_jax.data.readers import read_examples

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {"train": 120, "dev": 40, "test": 40}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """The default-size dataset written once; (directory, returned splits)."""
  directory = tmp_path_factory.mktemp("synthetic")
  return directory, synthetic.write_synthetic_dataset(directory, seed=3)


def _file_bytes(directory: pathlib.Path):
  return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_writes_the_d2e2s_files_with_the_requested_sizes(written):
  directory, splits = written
  assert sorted(path.name for path in directory.iterdir()) == [
      "dev_dep_triple_polarity_result.json", "test_dep_triple_polarity_result.json",
      "train_dep_triple_polarity_result.json", "types.json"]
  assert {split: len(examples) for split, examples in splits.items()} == synthetic.DEFAULT_SIZES


def test_same_seed_gives_identical_files_even_in_another_process(written, tmp_path):
  directory, _ = written
  script = ("import sys; from d2e2s_jax.data import synthetic; "
            "synthetic.write_synthetic_dataset(sys.argv[1], seed=3)")
  environment = dict(os.environ, PYTHONHASHSEED="12345")
  subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], check=True, cwd=REPO_ROOT,
                 env=environment, timeout=120)
  assert _file_bytes(tmp_path / "again") == _file_bytes(directory)
  synthetic.write_synthetic_dataset(tmp_path / "other", seed=4)
  other = _file_bytes(tmp_path / "other")
  train_file = "train_dep_triple_polarity_result.json"
  assert other[train_file] != _file_bytes(directory)[train_file]


def test_every_record_reads_back_valid_and_unchanged(written):
  directory, splits = written
  for split, examples in splits.items():
    read_back = read_examples(directory / f"{split}_dep_triple_polarity_result.json", "d2e2s")
    assert read_back == examples


def test_records_have_the_benchmark_fields_and_ids_say_synthetic(written, shared_data_dir):
  directory, _ = written
  records = json.loads((directory / "train_dep_triple_polarity_result.json").read_text())
  benchmark = json.loads((shared_data_dir / "aste" / "14res" / "dev_dep_triple_polarity_result.json").read_text())
  assert {frozenset(record) for record in records} == {frozenset(benchmark[0])}
  assert all(record["orig_id"].startswith("synthetic:train:") for record in records)
  assert all(record["dependency"][0][0] == "ROOT" for record in records)
  benchmark_types = json.loads((shared_data_dir / "aste" / "types.json").read_text())
  written_types = json.loads((directory / "types.json").read_text())
  assert written_types == benchmark_types
  # The model reads the sentiment order from this file, so the order must match too.
  assert list(written_types["sentiment"]) == list(benchmark_types["sentiment"])


def test_splits_are_disjoint_and_ids_unique(written):
  _, splits = written
  sentences = [example.tokens for examples in splits.values() for example in examples]
  assert len(set(sentences)) == len(sentences)
  ids = [example.id for examples in splits.values() for example in examples]
  assert len(set(ids)) == len(ids) and all(i.startswith(synthetic.ID_PREFIX) for i in ids)


def test_each_sentence_is_one_valid_tree_with_the_terms_close_in_it(written):
  _, splits = written
  for example in splits["train"]:
    validate_heads(example.heads, example.id)
    assert example.heads.count(0) == 1 and example.relations[example.heads.index(0)] == "ROOT"
    assert len(example.pos_tags) == len(example.tokens) and "" not in example.relations
    for triplet in example.triplets:
      # Template trees put an aspect within two arcs of its opinion (nsubj, amod, or
      # one conj more), which is what makes the syntactic graph informative.
      assert _tree_distance(example.heads, _phrase_head(example.heads, triplet.aspect),
                            _phrase_head(example.heads, triplet.opinion)) <= 2, example


def _phrase_head(heads, span):
  inside = [word for word in range(*span) if not span[0] <= heads[word] - 1 < span[1]]
  assert len(inside) == 1, f"span {span} is not one subtree"
  return inside[0]


def _tree_distance(heads, first, second):
  def ancestors(word):
    chain = [word]
    while heads[chain[-1]] != 0:
      chain.append(heads[chain[-1]] - 1)
    return chain
  first_chain, second_chain = ancestors(first), ancestors(second)
  common = next(word for word in first_chain if word in second_chain)
  return first_chain.index(common) + second_chain.index(common)


def test_labels_are_consistent_and_varied(written):
  _, splits = written
  roles = collections.defaultdict(set)
  polarity_of_phrase = collections.defaultdict(set)
  triplet_counts, sentiments, aspect_lengths = collections.Counter(), collections.Counter(), collections.Counter()
  for example in (example for examples in splits.values() for example in examples):
    word_roles = ["other"] * len(example.tokens)
    for triplet in example.triplets:
      for word in range(*triplet.aspect):
        word_roles[word] = "aspect"
      for word in range(*triplet.opinion):
        word_roles[word] = "opinion"
      polarity_of_phrase[example.tokens[slice(*triplet.opinion)]].add(triplet.sentiment)
      sentiments[triplet.sentiment] += 1
      aspect_lengths[triplet.aspect[1] - triplet.aspect[0]] += 1
    for token, role in zip(example.tokens, word_roles):
      roles[token].add(role)
    triplet_counts[len(example.triplets)] += 1
  assert {token: r for token, r in roles.items() if len(r) > 1} == {}
  assert {phrase: p for phrase, p in polarity_of_phrase.items() if len(p) > 1} == {}
  assert sorted(triplet_counts) == [1, 2, 3]
  assert sorted(sentiments) == sorted(SENTIMENTS) and min(sentiments.values()) >= 50
  assert sorted(aspect_lengths) == [1, 2]
  # A small vocabulary keeps the task learnable by a tiny model trained from scratch.
  assert 100 <= len(roles) <= 400


def test_sizes_are_configurable_and_checked():
  splits = synthetic.generate_synthetic_splits(seed=0, sizes=SMALL)
  assert {split: len(examples) for split, examples in splits.items()} == SMALL
  assert splits["dev"][0].id == "synthetic:dev:0"
  assert synthetic.generate_synthetic_splits(seed=0, sizes={"train": 0}) == {"train": []}
  with pytest.raises(ValueError, match="split 'dev': size must be a non-negative integer, got -1"):
    synthetic.generate_synthetic_splits(seed=0, sizes={"dev": -1})


def test_every_dev_and_test_word_is_seen_in_training(written):
  # A model trained from scratch cannot label a word it never saw.
  _, splits = written
  train_words = {word for example in splits["train"] for word in example.tokens}
  held_out_words = {word for split in ("dev", "test") for example in splits[split] for word in example.tokens}
  assert held_out_words - train_words == set()
