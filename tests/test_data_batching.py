"""Tests for d2e2s_jax.data.batching: the batch contract, determinism, buckets, round trips."""

import collections
import dataclasses
import pathlib

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import transformers

from d2e2s_jax.data import batching, encoding, graphs, readers
from d2e2s_jax.data.examples import SENTIMENT_OUTPUTS, Example, Triplet
from tests.test_data_sampling import examples as random_examples
from tests.test_data_support import WORDPIECE_IDS, staff_example, wordpiece_tokenizer

TOKENIZER = wordpiece_tokenizer()
PAD_ID = WORDPIECE_IDS["[PAD]"]

# dtype and shape (in terms of B, T, S, P, E) of every key, from WORKSPACE.md.
CONTRACT = {
    "input_ids": (np.int32, "BT"), "attention_mask": (np.int32, "BT"), "span_token_bounds": (np.int32, "BS2"),
    "span_word_bounds": (np.int32, "BS2"), "span_sizes": (np.int32, "BS"), "span_mask": (np.bool_, "BS"),
    "span_labels": (np.int32, "BS"), "pair_indices": (np.int32, "BP2"), "pair_mask": (np.bool_, "BP"),
    "pair_labels": (np.float32, "BP4"), "graph_senders": (np.int32, "BE"), "graph_receivers": (np.int32, "BE"),
    "graph_edge_mask": (np.bool_, "BE"), "example_index": (np.int32, "B"), "example_mask": (np.bool_, "B"),
}


def _dataset(count=11):
  base = [staff_example(),
          Example(id="b", tokens=("the", "food", "was", "very", "good", "but", "the", "service", "slow"),
                  triplets=(Triplet((1, 2), (3, 5), "POSITIVE"), Triplet((7, 8), (8, 9), "NEGATIVE"))),
          Example(id="c", tokens=("pizza",)),
          Example(id="d", tokens=("abcd", "", "great", "pizza"), triplets=(Triplet((3, 4), (2, 3), "POSITIVE"),))]
  return [base[index % len(base)] for index in range(count)]


def _encoded(examples):
  return encoding.encode_examples(examples, TOKENIZER, max_length=64)


def _check_contract(batch, config, train):
  keys = set(batching.TRAIN_KEYS if train else batching.EVAL_KEYS)
  assert set(batch) == keys
  sizes = {"B": config.batch_size, "T": batch["input_ids"].shape[1], "S": batch["span_mask"].shape[1],
           "E": batch["graph_edge_mask"].shape[1], "2": 2, "4": 4}
  if train:
    sizes["P"] = batch["pair_mask"].shape[1]
  for key in keys:
    dtype, axes = CONTRACT[key]
    assert batch[key].dtype == dtype, key
    assert batch[key].shape == tuple(sizes[axis] for axis in axes), key
  lengths = batch["attention_mask"].sum(1)
  for row in range(config.batch_size):
    length = lengths[row]
    assert np.all(batch["attention_mask"][row, :length] == 1) and np.all(batch["input_ids"][row, length:] == PAD_ID)
    if not batch["example_mask"][row]:
      assert batch["example_index"][row] == -1 and length == 0
      assert not batch["span_mask"][row].any() and not batch["graph_edge_mask"][row].any()
      continue
    spans = batch["span_token_bounds"][row][batch["span_mask"][row]]
    assert np.all(spans[:, 0] >= 1) and np.all(spans[:, 1] <= length - 1) and np.all(spans[:, 1] > spans[:, 0])
    edges = batch["graph_edge_mask"][row]
    assert batch["graph_senders"][row][edges].max() < length and batch["graph_receivers"][row][edges].max() < length
    if train:
      pairs = batch["pair_indices"][row][batch["pair_mask"][row]]
      assert pairs.size == 0 or pairs.max() < batch["span_mask"][row].sum()


@pytest.mark.parametrize("released_graph", [False, True])
def test_train_and_eval_batches_follow_the_contract(released_graph):
  encoded = _encoded(_dataset())
  config = batching.BatchConfig.for_tokenizer(TOKENIZER, batch_size=4, max_span_size=3, released_graph=released_graph)
  train = list(batching.train_batches(encoded, config, epoch=0, seed=1))
  assert len(train) == 11 // 4  # the partial batch is dropped
  for batch in train:
    _check_contract(batch, config, train=True)
  evaluation = list(batching.eval_batches(encoded, config))
  for batch in evaluation:
    _check_contract(batch, config, train=False)
  seen = np.concatenate([batch["example_index"][batch["example_mask"]] for batch in evaluation])
  assert sorted(seen.tolist()) == list(range(11))
  # The partial batch, padded with empty rows, is the first: the shortest sentences.
  assert [batch["example_mask"].sum() for batch in evaluation] == [11 % 4, 4, 4]


def test_batch_graph_is_the_chosen_construction():
  encoded = _encoded([staff_example()])
  for released, build in ((False, lambda: graphs.sentence_edges(encoded[0].word_piece_bounds, staff_example().heads, 9)),
                          (True, lambda: graphs.released_edges([1, 2, 1, 3], staff_example().dependency, 9))):
    config = batching.BatchConfig(batch_size=1, released_graph=released, pad_token_id=PAD_ID)
    (batch,) = batching.eval_batches(encoded, config)
    mask = batch["graph_edge_mask"][0]
    senders, receivers = build()
    assert batch["graph_senders"][0][mask].tolist() == senders.tolist()
    assert batch["graph_receivers"][0][mask].tolist() == receivers.tolist()


def _samples_by_example(batches):
  samples = {}
  for batch in batches:
    for row in np.flatnonzero(batch["example_mask"]):
      spans = batch["span_word_bounds"][row][batch["span_mask"][row]]
      pairs = batch["pair_indices"][row][batch["pair_mask"][row]]
      samples[int(batch["example_index"][row])] = (spans.tobytes(), pairs.tobytes())
  return samples


def test_samples_depend_on_seed_epoch_and_example_not_on_batch_order():
  encoded = _encoded(_dataset(12))
  config = batching.BatchConfig(batch_size=3, max_span_size=3, neg_entity_count=4, neg_triple_count=1,
                                pad_token_id=PAD_ID)
  first = list(batching.train_batches(encoded, config, epoch=2, seed=5))
  again = list(batching.train_batches(encoded, config, epoch=2, seed=5))
  for left, right in zip(first, again):
    for key in left:
      np.testing.assert_array_equal(left[key], right[key])
  other_orders = [batching.BatchConfig(batch_size=4, max_span_size=3, neg_entity_count=4, neg_triple_count=1,
                                       pad_token_id=PAD_ID, shuffle=False),
                  batching.BatchConfig(batch_size=3, max_span_size=3, neg_entity_count=4, neg_triple_count=1,
                                       pad_token_id=PAD_ID, length_grouping_batches=2)]
  reference = _samples_by_example(first)
  for other in other_orders:
    assert _samples_by_example(batching.train_batches(encoded, other, epoch=2, seed=5)) == reference
  assert _samples_by_example(batching.train_batches(encoded, config, epoch=3, seed=5)) != reference
  orders = {tuple(np.concatenate(batching.train_order([1] * 12, config, epoch, 5))) for epoch in range(4)}
  assert len(orders) == 4


def test_length_grouping_keeps_the_epoch_and_cuts_padding():
  lengths = np.random.default_rng(0).integers(5, 80, size=100)
  plain = batching.BatchConfig(batch_size=8, pad_token_id=PAD_ID)
  grouped = batching.BatchConfig(batch_size=8, pad_token_id=PAD_ID, length_grouping_batches=4)
  plain_batches = batching.train_order(lengths, plain, 0, 0)
  grouped_batches = batching.train_order(lengths, grouped, 0, 0)
  # Same sentences (the same remainder is dropped), less padding.
  assert sorted(np.concatenate(plain_batches)) == sorted(np.concatenate(grouped_batches))
  padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)
  assert padded(grouped_batches) < 0.85 * padded(plain_batches)


def test_bucket_sizes_and_shape_plan():
  assert [batching.bucket_size(n, None, 16) for n in (1, 16, 17, 25, 33, 49, 97)] == [16, 16, 24, 32, 48, 64, 128]
  assert [batching.bucket_size(n, (8, 20)) for n in (3, 8, 9, 20, 21, 41)] == [8, 8, 20, 20, 40, 60]
  plan = batching.ShapePlan.measure([10, 40, 23], [(30, 2, 50), (200, 9, 100), (90, 30, 60)])
  config = batching.BatchConfig(max_span_size=6)
  # T 20 -> 24: the sentences of 10 and 23 pieces bound S, P, E (rounded up to 8).
  assert batching.padded_sizes(20, 40, 3, 50, config, plan) == (24, 96, 32, 64)
  # T 17 -> 24 as well: same shape. T 30 -> 32: still the same two sentences.
  assert batching.padded_sizes(17, 20, 1, 20, config, plan) == (24, 96, 32, 64)
  assert batching.padded_sizes(30, 20, 1, 20, config, plan)[1:] == (96, 32, 64)
  assert batching.padded_sizes(33, 20, 1, 20, config, plan) == (48, 200, 32, 104)
  explicit = batching.BatchConfig(span_buckets=(64, 128), pair_buckets=(4,), edge_buckets=(256,))
  assert batching.padded_sizes(20, 70, 9, 50, explicit, plan) == (24, 128, 12, 256)
  with pytest.raises(ValueError, match="ascending"):
    batching.BatchConfig(token_buckets=(32, 16))


def test_every_batch_with_the_same_length_bucket_has_the_same_shape():
  encoded = _encoded(_dataset(40))
  config = batching.BatchConfig(batch_size=3, max_span_size=4, neg_entity_count=5, pad_token_id=PAD_ID,
                                drop_remainder=False)
  shapes = collections.defaultdict(set)
  for epoch in range(3):
    for batch in batching.train_batches(encoded, config, epoch, seed=0):
      shapes[batch["input_ids"].shape].add(tuple(batch[key].shape for key in ("span_mask", "pair_mask",
                                                                               "graph_edge_mask")))
  assert all(len(per_length) == 1 for per_length in shapes.values())


def test_merged_plans_share_shapes_and_planned_batches_are_identical():
  first = batching.ShapePlan.measure([10, 40, 23], [(30, 2, 50), (200, 9, 100), (90, 30, 60)])
  second = batching.ShapePlan.measure([12, 30], [(100, 5, 40), (20, 1, 10)])
  merged = first.merge(second)
  for seq_len in (8, 10, 12, 20, 23, 30, 40, 64):
    np.testing.assert_array_equal(merged.bounds(seq_len),
                                  np.maximum(first.bounds(seq_len), second.bounds(seq_len)))
  encoded = _encoded(_dataset(20))
  config = batching.BatchConfig(batch_size=3, max_span_size=4, neg_entity_count=5, pad_token_id=PAD_ID)
  for make, train in ((lambda p: batching.train_batches(encoded, config, 1, 0, planned=p), True),
                      (lambda p: batching.eval_batches(encoded, config, planned=p), False)):
    planned = batching.plan_dataset(encoded, config, train=train)
    for plain, reused in zip(make(None), make(planned), strict=True):
      assert plain.keys() == reused.keys()
      for key in plain:
        np.testing.assert_array_equal(plain[key], reused[key])


def _gold_round_trip(encoded, config):
  recovered = {}
  for batch in batching.train_batches(encoded, config, epoch=0, seed=0):
    for row in np.nonzero(batch["example_mask"])[0]:  # read the triplets back from the pair labels
      bounds, pairs = batch["span_word_bounds"][row], batch["pair_indices"][row]
      found = {Triplet(tuple(map(int, bounds[pairs[pair, 0]])), tuple(map(int, bounds[pairs[pair, 1]])),
                       SENTIMENT_OUTPUTS[output])
               for pair, output in zip(*np.nonzero(batch["pair_labels"][row] > 0.5)) if batch["pair_mask"][row, pair]}
      recovered[int(batch["example_index"][row])] = sorted(found, key=lambda t: (t.aspect, t.opinion, t.sentiment))
  for item in encoded:
    assert recovered[item.index] == sorted(set(item.triplets), key=lambda t: (t.aspect, t.opinion, t.sentiment))
  return recovered


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(examples=st.lists(random_examples(), min_size=1, max_size=6), batch_size=st.integers(1, 4))
def test_batches_round_trip_to_the_gold_triplets(examples, batch_size):
  config = batching.BatchConfig(batch_size=batch_size, max_span_size=2, neg_entity_count=3, neg_triple_count=2,
                                pad_token_id=PAD_ID, drop_remainder=False)
  _gold_round_trip(_encoded(examples), config)


def _character_tokenizer(examples):
  """A WordPiece tokenizer that splits every word into characters (many multi-piece words)."""
  characters = sorted({character for example in examples for word in example.tokens for character in word.lower()})
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + ["##" + c for c in characters]
  return transformers.BertTokenizer(vocab={token: index for index, token in enumerate(dict.fromkeys(vocab))})


def test_benchmark_round_trip_and_shape_report(shared_data_dir):
  examples = readers.read_examples(readers.dataset_paths(shared_data_dir, "14res", "dev"))
  tokenizer = _character_tokenizer(examples)
  encoded = encoding.encode_examples(examples, tokenizer, max_length=512)
  config = batching.BatchConfig.for_tokenizer(tokenizer, batch_size=16, drop_remainder=False)
  _gold_round_trip(encoded, config)
  report = batching.shape_report(encoded, config)
  assert report["num_batches"] == -(-len(examples) // 16)
  assert report["distinct_shapes"] <= 12
  print(report)
  assert all(0.0 < report[f"{axis}_efficiency"] <= 1 for axis in ("token", "span", "pair", "edge"))
  grouped = batching.shape_report(encoded, batching.BatchConfig.for_tokenizer(
      tokenizer, batch_size=16, drop_remainder=False, length_grouping_batches=8))
  assert grouped["token_efficiency"] > report["token_efficiency"]
  sizes = collections.Counter(batch["input_ids"].shape[1] for batch in batching.eval_batches(encoded, config))
  assert len(sizes) <= 8


def test_finer_token_buckets():
  config = batching.BatchConfig(token_buckets_per_octave=4)
  # From 8 in steps of a quarter octave: at most 1.25x padding.
  assert [batching.token_bucket(n, config) for n in (1, 8, 9, 15, 17, 29, 33, 57, 65, 200)] == \
         [8, 8, 10, 16, 20, 32, 40, 64, 80, 224]
  assert [batching.token_bucket(n, batching.BatchConfig()) for n in (1, 17, 33, 97)] == [16, 24, 48, 128]
  for n in range(1, 600):
    assert n <= batching.token_bucket(n, config) <= max(1.25 * n, 8)


def test_length_grouping_keeps_training_random():
  lengths = np.random.default_rng(1).integers(5, 90, size=203)
  config = batching.BatchConfig(batch_size=8, pad_token_id=PAD_ID, length_grouping_batches=8,
                                token_buckets_per_octave=4)
  plain = batching.BatchConfig(batch_size=8, pad_token_id=PAD_ID)
  epochs = {}
  for seed, epoch in ((0, 0), (0, 1), (1, 0)):
    batches = batching.train_order(lengths, config, epoch, seed)
    kept = np.concatenate(batches)
    # A permutation of the sentences the plain order keeps (the same dropped remainder).
    assert sorted(kept) == sorted(np.concatenate(batching.train_order(lengths, plain, epoch, seed)))
    assert len(set(kept.tolist())) == len(kept) == 203 // 8 * 8
    epochs[seed, epoch] = batches
  as_sets = lambda batches: {frozenset(b.tolist()) for b in batches}
  assert as_sets(epochs[0, 0]) != as_sets(epochs[0, 1]) and as_sets(epochs[0, 0]) != as_sets(epochs[1, 0])
  # Batches are grouped by T bucket, not sorted by length: with three lengths of different
  # buckets, all but the batches that straddle two buckets hold one bucket, and the
  # sentences of a bucket do not meet in the same batches every epoch.
  lengths = np.random.default_rng(2).choice([9, 30, 60], size=200)
  one_window = dataclasses.replace(config, length_grouping_batches=25)
  first, second = (batching.train_order(lengths, one_window, epoch, 0) for epoch in (0, 1))
  assert sum(len(set(lengths[b].tolist())) > 1 for b in first) <= 2
  pairs = lambda batches: {(int(a), int(b)) for batch in batches for a in batch for b in batch if a < b}
  assert len(pairs(first) & pairs(second)) < 0.5 * len(pairs(first))


def test_eval_partial_batch_is_the_shortest():
  encoded = _encoded(_dataset(11))
  config = batching.BatchConfig(batch_size=4, max_span_size=3, pad_token_id=PAD_ID)
  batches = list(batching.eval_batches(encoded, config))
  lengths = [batch["attention_mask"].sum(1)[batch["example_mask"]] for batch in batches]
  assert batches[0]["example_mask"].sum() == 3 and lengths[0].max() <= min(l.min() for l in lengths[1:])


def _flagfile_settings(path):
  values = {}
  for line in path.read_text().splitlines():
    if line.startswith("--") and "=" in line:
      name, value = line[2:].split("=", 1)
      values[name] = value
  return values


@pytest.mark.parametrize("dataset", ["14lap", "14res", "15res", "16res"])
def test_dataset_flagfiles_cut_training_padding_to_under_15_percent(dataset, shared_data_dir, tmp_path):
  """Issue 14's goal: token efficiency >= 0.85 at batch 16 with the dataset flagfile, with a
  bounded number of shapes (the from-scratch tokenizer of cpu_small.flags: the pretrained
  one cannot be downloaded here)."""
  from d2e2s_jax import tokenization  # pylint: disable=import-outside-toplevel
  flags = _flagfile_settings(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" /
                             f"{dataset}.flags")
  examples = {split: readers.read_examples(readers.dataset_paths(shared_data_dir, dataset, split))
              for split in ("train", "dev")}
  tokenization.train_sentencepiece_tokenizer((" ".join(e.tokens) for e in examples["train"]), tmp_path,
                                             vocab_size=4000)
  tokenizer = tokenization.load_tokenizer(tmp_path)
  encoded = {split: encoding.encode_examples(items, tokenizer, max_length=int(flags["max_length"]),
                                             on_overflow="truncate") for split, items in examples.items()}
  config = batching.BatchConfig.for_tokenizer(
      tokenizer, batch_size=int(flags["batch_size"]), length_grouping_batches=int(flags["length_grouping_batches"]),
      token_buckets_per_octave=int(flags["token_buckets_per_octave"]))
  for epoch, seed in ((0, 0), (1, 0), (0, 1)):
    report = batching.shape_report(encoded["train"], config, epoch=epoch, seed=seed)
    assert report["token_efficiency"] >= 0.85 and report["distinct_shapes"] <= 17, report
  evaluation = batching.shape_report(encoded["dev"], config, train=False)
  assert evaluation["token_efficiency"] >= 0.75 and evaluation["distinct_shapes"] <= 14, evaluation
