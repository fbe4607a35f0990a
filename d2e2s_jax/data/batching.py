"""Batches that follow the batch contract in WORKSPACE.md, padded to shape buckets.

Public API:

* `BatchConfig`: batch size, span and negative-sampling settings, the tokenizer's pad id,
  the bucket sizes and the graph construction (`released_graph`).
* `train_batches(encoded, config, epoch, seed)`: one epoch of training batches, shuffled
  with `numpy.random.default_rng([seed, epoch])`; each sentence's negatives are drawn
  with `default_rng([seed, epoch, example.index])`, so a resumed run, or another batch
  order, sees the same samples. The last partial batch is dropped by default
  (`drop_remainder`): steps per epoch = floor(sentences / batch size), as on the
  reference page.
* `plan_dataset(encoded, config, train)`: a `PlannedSplit` (each sentence's graph edges
  and the split's `ShapePlan`), computed once per run and passed to `train_batches` /
  `eval_batches`.
* `eval_batches(encoded, config)`: every sentence once (by default in length order,
  `example_index` says which), every candidate span with its gold label; no pair keys.
  One batch (the last; in length order the first, of the shortest sentences) is padded
  with empty rows.
* `token_bucket(num_tokens, config)`: the padded T of a batch.
* `shape_report(encoded, config)`: distinct batch shapes in an epoch and padding
  efficiency.

A batch is a flat dict of numpy arrays whose leading axis is the (static) batch size,
so it can be sharded along that axis. T (sequence) is rounded up to a bucket, by default
the sizes 2^k and 3 * 2^(k-1) from 16 (at most 1.5x padding; `token_buckets_per_octave=4`:
quarter octaves from 8, at most 1.25x); S (spans), P (pairs) and
E (graph edges per sentence) are, by default, functions of T measured on the dataset
(`ShapePlan`), so every batch with the same T has the same shape and the jitted steps
compile about once per T bucket.

Deliberate differences from the released code (which pads each batch to its longest
sentence and shuffles uniformly):
* Batches are padded to shape buckets (static shapes for jit); padding is masked.
* `length_grouping_batches` > 0 groups batches by length (off by default; on in the
  dataset flagfiles, whose accuracy README "Length grouping" compares).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from d2e2s_jax import settings
from d2e2s_jax.data import graphs, sampling
from d2e2s_jax.data.encoding import EncodedExample

Batch = Dict[str, np.ndarray]
TRAIN_KEYS = ("input_ids", "attention_mask", "span_token_bounds", "span_word_bounds", "span_sizes", "span_mask",
              "span_labels", "pair_indices", "pair_mask", "pair_labels", "graph_senders", "graph_receivers",
              "graph_edge_mask", "example_index", "example_mask")
EVAL_KEYS = tuple(key for key in TRAIN_KEYS if not key.startswith("pair_"))


# BatchConfig field -> the setting it takes its value (and default, and rule) from. The
# batch size is `batch_size` for training and `eval_batch_size` for evaluation
# (`TrainConfig.batch_config`).
SETTING_NAMES = {
    "batch_size": "batch_size",
    "max_span_size": "max_span_size",
    "neg_entity_count": "neg_entity_count",
    "neg_triple_count": "neg_triple_count",
    "released_graph": "released_graph",
    "length_grouping_batches": "length_grouping_batches",
    "token_buckets_per_octave": "token_buckets_per_octave",
}
_DEFAULT = settings.component_defaults(SETTING_NAMES)


@dataclasses.dataclass(frozen=True)
class BatchConfig:
  """How sentences become batches.

  The fields named in `SETTING_NAMES` take their defaults and rules from
  `d2e2s_jax.settings`.

  Attributes:
    batch_size: rows per batch (static; missing rows are padding).
    max_span_size: longest candidate span in words.
    neg_entity_count: negative spans drawn per sentence in training, -1 = all.
    neg_triple_count: negative pairs drawn per sentence in training, -1 = all.
    pad_token_id: the tokenizer's `pad_token_id`, used after `[SEP]`.
    token_buckets, span_buckets, pair_buckets, edge_buckets: allowed padded sizes of
      T, S, P, E (ascending; a size above the largest is rounded up to a multiple of
      it). None: T from the 2^k / 3*2^(k-1) series from 16; S, P, E from the dataset's
      `ShapePlan` (a function of T).
    released_graph: build the syntactic graph the released code's way.
    drop_remainder: drop the last partial training batch.
    shuffle: shuffle the training order each epoch.
    length_grouping_batches: 0 (default, the released behaviour) makes batches of
      uniformly shuffled sentences. k > 0 splits the shuffled epoch into windows of
      about k batches each (equal sizes), orders each window's sentences by their T
      bucket (ties keep the shuffled order, so batches stay random within a bucket: the
      same padding as a sort by length), cuts it into batches, then shuffles the batch
      order: less padding (see `shape_report`), batches of similar lengths.
    token_buckets_per_octave: T buckets per doubling when `token_buckets` is None: 2
      (16, 24, 32, 48, ...) or 4 (8, 10, 12, 14, 16, 20, ...; the series starts at
      32 / this). Finer buckets pay off with length grouping; they cost compilations.
    eval_sort_by_length: evaluate sentences in length order (less padding; results are
      keyed by `example_index`, so order does not matter); the partial batch is the
      first, the shortest sentences, so its empty rows are padded to the smallest T.
  """

  batch_size: int = _DEFAULT["batch_size"]
  max_span_size: int = _DEFAULT["max_span_size"]
  neg_entity_count: int = _DEFAULT["neg_entity_count"]
  neg_triple_count: int = _DEFAULT["neg_triple_count"]
  pad_token_id: int = 0
  token_buckets: Optional[Tuple[int, ...]] = None
  span_buckets: Optional[Tuple[int, ...]] = None
  pair_buckets: Optional[Tuple[int, ...]] = None
  edge_buckets: Optional[Tuple[int, ...]] = None
  released_graph: bool = _DEFAULT["released_graph"]
  drop_remainder: bool = True
  shuffle: bool = True
  length_grouping_batches: int = _DEFAULT["length_grouping_batches"]
  token_buckets_per_octave: int = _DEFAULT["token_buckets_per_octave"]
  eval_sort_by_length: bool = True

  def __post_init__(self):
    settings.check_fields(self, SETTING_NAMES)
    for name in ("token_buckets", "span_buckets", "pair_buckets", "edge_buckets"):
      buckets = getattr(self, name)
      if buckets is not None and (not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1):
        raise ValueError(f"{name} must be ascending distinct positive sizes, got {buckets}")

  @classmethod
  def for_tokenizer(cls, tokenizer, **kwargs) -> "BatchConfig":
    """A config whose pad id is the tokenizer's."""
    if tokenizer.pad_token_id is None:
      raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token")
    return cls(pad_token_id=int(tokenizer.pad_token_id), **kwargs)


# Smallest default T bucket, times the buckets per octave (16 for the default 2, 8 for 4):
# short sentences share one shape, and finer series pad them less too.
_TOKEN_FLOOR_TIMES_STEPS = 32
# S, P and E are rounded up to a multiple of this.
_AXIS_QUANTUM = 8


@dataclasses.dataclass(frozen=True)
class ShapePlan:
  """Per-dataset sizes that make S, P and E functions of the T bucket.

  A batch padded to T holds only sentences of at most T pieces, so it never needs more
  spans (pairs, edges) than the largest need among all such sentences of the dataset.
  That bound, rounded up to a multiple of 8, is the padded size: every batch of the
  dataset with the same T has the same shape, and the jitted step compiles once per T
  bucket. The counts are exact before sampling (`sampling.sample_sizes`).

  Attributes:
    lengths: the sentences' piece counts, ascending.
    running_max: int [N, 3], for each prefix of `lengths`, the largest (spans, pairs,
      edges) need among those sentences.
  """

  lengths: np.ndarray
  running_max: np.ndarray

  @classmethod
  def measure(cls, lengths: Sequence[int], needs: Sequence[Tuple[int, int, int]]) -> "ShapePlan":
    lengths = np.asarray(lengths, dtype=np.int64)
    needs = np.asarray(needs, dtype=np.int64).reshape(-1, 3)
    order = np.argsort(lengths, kind="stable")
    running_max = np.maximum.accumulate(needs[order], axis=0) if len(order) else np.zeros((0, 3), np.int64)
    return cls(lengths=lengths[order], running_max=running_max)

  def bounds(self, seq_len: int) -> np.ndarray:
    """The largest (spans, pairs, edges) needs among sentences of at most `seq_len` pieces."""
    count = int(np.searchsorted(self.lengths, seq_len, side="right"))
    return self.running_max[count - 1] if count else np.zeros(3, np.int64)

  def size(self, axis: int, seq_len: int, need: int) -> int:
    # max with the need guards against a batch the plan was not measured on.
    return _round_up(max(int(self.bounds(seq_len)[axis]), need, 1), _AXIS_QUANTUM)

  @classmethod
  def worst_case(cls, max_span_size: int, max_length: int) -> "ShapePlan":
    """The plan of every sentence that fits `max_length` pieces, whatever its words.

    For sentences not known in advance (a `Predictor`'s): a batch of T pieces gets the
    spans of T - 2 one-piece words and T * T edges, so the jitted step compiles once per
    T bucket, whichever sentences later calls bring.
    """
    lengths = np.arange(1, bucket_size(max_length, None, _TOKEN_FLOOR_TIMES_STEPS // 2) + 1)
    words = np.maximum(lengths - 2, 0)
    spans = [num_candidate_spans(int(n), max_span_size) for n in words]
    return cls(lengths=lengths, running_max=np.stack([spans, np.zeros_like(lengths), lengths * lengths], axis=1))

  def merge(self, other: "ShapePlan") -> "ShapePlan":
    """The plan of two datasets together (e.g. dev and test, so they share compiled shapes)."""
    lengths = np.union1d(self.lengths, other.lengths)
    running_max = np.asarray([np.maximum(self.bounds(length), other.bounds(length)) for length in lengths],
                             dtype=np.int64).reshape(-1, 3)
    return ShapePlan(lengths=lengths, running_max=running_max)


def num_candidate_spans(num_words: int, max_span_size: int) -> int:
  """Candidate spans of up to `max_span_size` words in a sentence of `num_words` words."""
  return sum(num_words - size + 1 for size in range(1, min(max_span_size, num_words) + 1))


def _round_up(value: int, quantum: int) -> int:
  return -(-value // quantum) * quantum


def bucket_size(size: int, buckets: Optional[Sequence[int]], floor: int = 1, per_octave: int = 2) -> int:
  """The padded size for `size`: the smallest bucket that holds it (see BatchConfig).

  Without explicit `buckets` the sizes run from `floor` in `per_octave` equal steps per
  doubling: 2 gives 16, 24, 32, 48, 64, ... (at most 1.5x padding), 4 gives 16, 20,
  24, 28, 32, 40, ... (at most 1.25x).
  """
  size = max(size, 1)
  if buckets is None:
    bucket = floor
    while bucket < size:
      bucket += max((1 << (bucket.bit_length() - 1)) // per_octave, 1)
    return bucket
  for bucket in buckets:
    if bucket >= size:
      return bucket
  largest = buckets[-1]
  return -(-size // largest) * largest


def token_bucket(num_tokens: int, config: BatchConfig) -> int:
  """The padded T of a batch whose longest sentence has `num_tokens` pieces."""
  steps = config.token_buckets_per_octave
  return bucket_size(num_tokens, config.token_buckets, max(_TOKEN_FLOOR_TIMES_STEPS // steps, 1), steps)


def padded_sizes(num_tokens: int, num_spans: int, num_pairs: int, num_edges: int, config: BatchConfig,
                 plan: ShapePlan) -> Tuple[int, int, int, int]:
  """Padded (T, S, P, E) for a batch needing the given sizes.

  T comes from `config.token_buckets` (default: the 2^k / 3*2^(k-1) series from 16).
  An axis with explicit buckets in the config is bucketed on its own; otherwise it is
  sized by the dataset's `ShapePlan`, as a function of T.
  """
  seq_len = token_bucket(num_tokens, config)
  sizes = [seq_len]
  for axis, (need, buckets) in enumerate(((num_spans, config.span_buckets), (num_pairs, config.pair_buckets),
                                          (num_edges, config.edge_buckets))):
    sizes.append(bucket_size(need, buckets) if buckets is not None else plan.size(axis, seq_len, need))
  return tuple(sizes)


def _sentence_edges(encoded: EncodedExample, released: bool) -> graphs.Edges:
  example = encoded.example
  if released:
    pieces = encoded.word_piece_bounds[:, 1] - encoded.word_piece_bounds[:, 0]
    return graphs.released_edges(pieces.tolist(), example.dependency, encoded.num_pieces,
                                 where=f"example {encoded.index} ({example.id})")
  return graphs.sentence_edges(encoded.word_piece_bounds, example.heads, encoded.num_pieces)


class PlannedSplit(NamedTuple):
  """What batching a split needs beyond its sentences, computed once per run.

  Attributes:
    edges: each sentence's syntactic graph edges, by example index.
    shapes: the padded sizes of its batches (possibly merged with another split's,
      `ShapePlan.merge`, so that both share compiled shapes).
  """

  edges: List[graphs.Edges]
  shapes: ShapePlan

  def with_shapes(self, shapes: ShapePlan) -> "PlannedSplit":
    return self._replace(shapes=shapes)


def plan_dataset(encoded: Sequence[EncodedExample], config: BatchConfig, train: bool) -> PlannedSplit:
  """Each sentence's graph edges and the dataset's ShapePlan (computed once per pass)."""
  edges = [_sentence_edges(item, config.released_graph) for item in encoded]
  needs = []
  for item, (senders, _) in zip(encoded, edges):
    spans, pairs = sampling.sample_sizes(item, max_span_size=config.max_span_size,
                                         neg_entity_count=config.neg_entity_count,
                                         neg_triple_count=config.neg_triple_count, train=train)
    needs.append((spans, pairs, len(senders)))
  return PlannedSplit(edges, ShapePlan.measure([item.num_pieces for item in encoded], needs))


def _assemble(rows: List[Tuple[EncodedExample, sampling.SentenceSample, graphs.Edges]], config: BatchConfig,
              plan: ShapePlan, with_pairs: bool) -> Batch:
  """Pads the rows' arrays into one batch dict (WORKSPACE.md's contract)."""
  batch_size = config.batch_size
  seq_len, num_spans, num_pairs, num_edges = padded_sizes(
      max(e.num_pieces for e, _, _ in rows), max(s.num_spans for _, s, _ in rows),
      max(s.num_pairs for _, s, _ in rows), max(len(g[0]) for _, _, g in rows), config, plan)
  batch = {
      "input_ids": np.full((batch_size, seq_len), config.pad_token_id, np.int32),
      "attention_mask": np.zeros((batch_size, seq_len), np.int32),
      # Padded spans point at [CLS] with size 0 so a model may pool them without NaNs.
      "span_token_bounds": np.tile(np.asarray([0, 1], np.int32), (batch_size, num_spans, 1)),
      "span_word_bounds": np.zeros((batch_size, num_spans, 2), np.int32),
      "span_sizes": np.zeros((batch_size, num_spans), np.int32),
      "span_mask": np.zeros((batch_size, num_spans), bool),
      "span_labels": np.zeros((batch_size, num_spans), np.int32),
      "graph_senders": np.zeros((batch_size, num_edges), np.int32),
      "graph_receivers": np.zeros((batch_size, num_edges), np.int32),
      "graph_edge_mask": np.zeros((batch_size, num_edges), bool),
      "example_index": np.full((batch_size,), -1, np.int32),
      "example_mask": np.zeros((batch_size,), bool),
  }
  if with_pairs:
    batch["pair_indices"] = np.zeros((batch_size, num_pairs, 2), np.int32)
    batch["pair_mask"] = np.zeros((batch_size, num_pairs), bool)
    batch["pair_labels"] = np.zeros((batch_size, num_pairs, sampling.NUM_PAIR_OUTPUTS), np.float32)
  for row, (encoded, sample, (senders, receivers)) in enumerate(rows):
    length, spans, edges = encoded.num_pieces, sample.num_spans, len(senders)
    batch["input_ids"][row, :length] = encoded.input_ids
    batch["attention_mask"][row, :length] = 1
    batch["span_token_bounds"][row, :spans] = sample.span_token_bounds
    batch["span_word_bounds"][row, :spans] = sample.span_word_bounds
    batch["span_sizes"][row, :spans] = sample.span_sizes
    batch["span_mask"][row, :spans] = True
    batch["span_labels"][row, :spans] = sample.span_labels
    batch["graph_senders"][row, :edges] = senders
    batch["graph_receivers"][row, :edges] = receivers
    batch["graph_edge_mask"][row, :edges] = True
    batch["example_index"][row] = encoded.index
    batch["example_mask"][row] = True
    if with_pairs:
      pairs = sample.num_pairs
      batch["pair_indices"][row, :pairs] = sample.pair_indices
      batch["pair_mask"][row, :pairs] = True
      batch["pair_labels"][row, :pairs] = sample.pair_labels
  return batch


def _check_indices(encoded: Sequence[EncodedExample]) -> None:
  for position, item in enumerate(encoded):
    if item.index != position:
      raise ValueError(f"encoded example at position {position} has index {item.index}; "
                       "encode the dataset with encode_examples so indices match positions")


def train_order(lengths: Sequence[int], config: BatchConfig, epoch: int, seed: int) -> List[np.ndarray]:
  """Example indices of each training batch of an epoch.

  Args:
    lengths: each example's number of pieces (used by length grouping only).
    config: the batch config.
    epoch, seed: the shuffle is `default_rng([seed, epoch])`.
  """
  num_examples = len(lengths)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(num_examples) if config.shuffle else np.arange(num_examples)
  full = num_examples // config.batch_size * config.batch_size
  # The dropped remainder is the tail of the shuffled order, with or without grouping.
  order = order[:full if config.drop_remainder else num_examples]
  batches = [order[start:start + config.batch_size] for start in range(0, len(order), config.batch_size)]
  if config.length_grouping_batches and batches:
    # Windows of about k batches each (equal sizes: no small, ill-grouped last window);
    # within one, sentences are ordered by their T bucket, ties in the shuffled order:
    # the same padding as a sort by length, random batches within a bucket.
    buckets = np.asarray([token_bucket(int(length), config) for length in lengths])
    windows = np.array_split(np.arange(len(batches)), -(-len(batches) // config.length_grouping_batches))
    batches = []
    for window in windows:
      chunk = order[window[0] * config.batch_size:min((window[-1] + 1) * config.batch_size, len(order))]
      chunk = chunk[np.argsort(buckets[chunk], kind="stable")]
      batches.extend(chunk[start:start + config.batch_size] for start in range(0, len(chunk), config.batch_size))
  if config.length_grouping_batches and config.shuffle:
    # Shuffle the batch order so the epoch is no length curriculum.
    batches = [batches[index] for index in rng.permutation(len(batches))]
  return batches


def train_batches(encoded: Sequence[EncodedExample], config: BatchConfig, epoch: int, seed: int,
                  planned: Optional[PlannedSplit] = None) -> Iterator[Batch]:
  """Yields one epoch of training batches (see the module docstring).

  `planned` is `plan_dataset(encoded, config, train=True)`, computed once by a caller
  that runs many epochs; by default it is computed here.
  """
  _check_indices(encoded)
  edges, plan = planned or plan_dataset(encoded, config, train=True)
  for indices in train_order([item.num_pieces for item in encoded], config, epoch, seed):
    rows = []
    for index in indices:
      item = encoded[int(index)]
      sample = sampling.train_sample(item, max_span_size=config.max_span_size,
                                     neg_entity_count=config.neg_entity_count,
                                     neg_triple_count=config.neg_triple_count,
                                     rng=np.random.default_rng([seed, epoch, item.index]))
      rows.append((item, sample, edges[item.index]))
    yield _assemble(rows, config, plan, with_pairs=True)


def eval_batches(encoded: Sequence[EncodedExample], config: BatchConfig,
                 planned: Optional[PlannedSplit] = None) -> Iterator[Batch]:
  """Yields every sentence once, in order, with all candidate spans (see module docstring).

  `planned` is `plan_dataset(encoded, config, train=False)`, possibly with shapes merged
  with another split's (`ShapePlan.merge`) so both splits share compiled shapes.
  """
  _check_indices(encoded)
  edges, plan = planned or plan_dataset(encoded, config, train=False)
  order = list(encoded)
  starts = list(range(0, len(order), config.batch_size))
  if config.eval_sort_by_length:
    order.sort(key=lambda item: item.num_pieces)
    # The partial batch (padded with empty rows) holds the shortest sentences, not the longest.
    remainder = len(order) % config.batch_size
    if remainder:
      starts = [0] + list(range(remainder, len(order), config.batch_size))
  for start, end in zip(starts, starts[1:] + [len(order)]):
    rows = [(item, sampling.eval_sample(item, max_span_size=config.max_span_size), edges[item.index])
            for item in order[start:end]]
    yield _assemble(rows, config, plan, with_pairs=False)


def shape_report(encoded: Sequence[EncodedExample], config: BatchConfig, *, epoch: int = 0, seed: int = 0,
                 train: bool = True) -> Dict[str, float]:
  """Distinct batch shapes and padding efficiency of one epoch.

  Returns:
    num_batches; distinct_shapes (distinct (T, S, P, E) tuples, i.e. compilations of a
    jitted step); token_efficiency (real pieces / B*T over all batches, padded rows
    included), and span_, pair_ and edge_efficiency likewise.
  """
  batches = train_batches(encoded, config, epoch, seed) if train else eval_batches(encoded, config)
  shapes = set()
  totals = {"token": [0, 0], "span": [0, 0], "pair": [0, 0], "edge": [0, 0]}
  count = 0
  for batch in batches:
    count += 1
    masks = {"token": batch["attention_mask"], "span": batch["span_mask"], "edge": batch["graph_edge_mask"]}
    if train:
      masks["pair"] = batch["pair_mask"]
    shapes.add(tuple(mask.shape[1] for mask in masks.values()))
    for name, mask in masks.items():
      totals[name][0] += int(mask.sum())
      totals[name][1] += mask.size
  report = {"num_batches": count, "distinct_shapes": len(shapes)}
  for name, (real, padded) in totals.items():
    if padded:
      report[f"{name}_efficiency"] = real / padded
  return report
