"""Scoring of aspect sentiment triplets: micro precision, recall and F1 in percent.

Three scores are reported, as in the D2E2S reference ("Inference and scoring"):

* `triplet`: exact match of (aspect span, opinion span, sentiment); entity types are
  implied by the position in the triplet (head = aspect/target, tail = opinion).
* `aspect`: aspect term extraction, the unique aspect spans of a sentence.
* `opinion`: opinion term extraction, the unique opinion spans of a sentence.

Every count is micro-averaged over the whole split: no sentence is dropped (the released
code truncated every split to a multiple of 16 sentences; the port does not). Duplicate
triplets or spans within one sentence count once, on both the gold and predicted side.

Two ways in:

* `TripletScorer`, an accumulator that a training or evaluation loop feeds one sentence
  at a time with decoded triplets (and, optionally, the term spans the span classifier
  kept, which may include spans that ended up in no triplet).
* `score(gold_examples, predicted_examples)`, which aligns two lists of `Example`s by id
  and fails, naming the id, when one side has a sentence the other lacks (or, with
  `align="order"`, pairs them by position, for files without ids). A prediction
  with `entities` (as `readers.read_predictions` gives) has as its aspect and opinion
  terms its entities typed `target` and `opinion`, as the released code scores terms
  (every span classified target/opinion, in a triplet or not); one without has its
  triplets' spans. Triplets are matched whatever their spans' predicted types, and a
  predicted INVALID triplet is a false positive.

A decoder that predicts thousands of triplets per sentence (an unselective model early in
training) can skip building one `Triplet` object per prediction: `TripletCodec` packs
spans and triplets into integers and `TripletScorer.add_codes` counts a sentence's
integer codes against its gold triplets, with exactly the counts of `TripletScorer.add`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from d2e2s_jax.data.examples import OPINION, TARGET, DataError, Example, Span, Triplet

SCORE_NAMES = ("triplet", "aspect", "opinion")

_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclasses.dataclass(frozen=True)
class PRF:
  """Micro-averaged counts and the precision, recall and F1 derived from them.

  Attributes:
    gold: number of gold items (unique per sentence).
    predicted: number of predicted items (unique per sentence).
    correct: number of predicted items that are also gold.
  """

  gold: int
  predicted: int
  correct: int

  @property
  def precision(self) -> float:
    """Percent of predicted items that are correct; 0 when nothing was predicted."""
    return 100.0 * self.correct / self.predicted if self.predicted else 0.0

  @property
  def recall(self) -> float:
    """Percent of gold items that were predicted; 0 when there is no gold item."""
    return 100.0 * self.correct / self.gold if self.gold else 0.0

  @property
  def f1(self) -> float:
    """Harmonic mean of precision and recall in percent; 0 when both are 0."""
    precision, recall = self.precision, self.recall
    if precision + recall == 0.0:
      return 0.0
    return 2.0 * precision * recall / (precision + recall)

  def __add__(self, other: "PRF") -> "PRF":
    return PRF(self.gold + other.gold, self.predicted + other.predicted, self.correct + other.correct)

  def as_dict(self) -> Dict[str, float]:
    """The JSON form: precision, recall, f1 (percent) and the three counts."""
    return {
        "precision": self.precision,
        "recall": self.recall,
        "f1": self.f1,
        "gold": self.gold,
        "predicted": self.predicted,
        "correct": self.correct,
    }


def count_set_matches(gold: Iterable[object], predicted: Iterable[object]) -> PRF:
  """Counts one sentence's items as sets, so duplicates on either side count once.

  Args:
    gold: the gold items of one sentence (hashable: triplets or spans).
    predicted: the predicted items of the same sentence.

  Returns:
    The counts for this sentence.
  """
  gold_set, predicted_set = set(gold), set(predicted)
  return PRF(gold=len(gold_set), predicted=len(predicted_set), correct=len(gold_set & predicted_set))


def _check_triplets(triplets: Iterable[Triplet], where: str) -> Set[Triplet]:
  """Normalizes triplets to a set, rejecting values that could never match silently."""
  checked = set()
  for triplet in triplets:
    if not isinstance(triplet, Triplet):
      raise TypeError(f"{where}: expected Triplet objects, got {type(triplet).__name__}")
    # Spans may arrive as lists or numpy ints from a decoder; normalize so that equal
    # spans hash equally instead of silently never matching.
    checked.add(
        Triplet(
            aspect=(int(triplet.aspect[0]), int(triplet.aspect[1])),
            opinion=(int(triplet.opinion[0]), int(triplet.opinion[1])),
            sentiment=str(triplet.sentiment),
        ))
  return checked


def _normalize_spans(spans: Iterable[Span]) -> Set[Span]:
  return {(int(start), int(end)) for start, end in spans}


def unique_codes(codes: np.ndarray) -> np.ndarray:
  """The distinct values of a 1-D integer (or object) array, ascending.

  Sorts and drops repeats; an already strictly increasing array is returned as is. (On
  these arrays this is several times faster than `np.unique` of numpy 2.x.)
  """
  codes = np.asarray(codes)
  if codes.size > 1 and not (codes[1:] > codes[:-1]).all():
    codes = np.sort(codes)
    keep = np.empty(codes.size, bool)
    keep[0] = True
    np.not_equal(codes[1:], codes[:-1], out=keep[1:])
    codes = codes[keep]
  return codes


@contextlib.contextmanager
def _collector_paused():
  """Pauses Python's cyclic garbage collector (restoring its previous state).

  Building tens of thousands of small acyclic objects (triplets, their span tuples)
  otherwise triggers repeated collections of the whole heap, which cost more than the
  building itself (about 3x in `benchmarks/decode.py`'s unselective regime).
  """
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def _count_members(needles: np.ndarray, haystack: np.ndarray) -> int:
  """How many of `needles` occur in `haystack` (ascending)."""
  if needles.size == 0 or haystack.size == 0:
    return 0
  return int(np.count_nonzero(haystack.take(haystack.searchsorted(needles), mode="clip") == needles))


@dataclasses.dataclass(frozen=True)
class TripletCodec:
  """Packs word spans and (aspect, opinion, sentiment) triplets into integers, one-to-one.

  A span [start, end) whose two word indices lie in `offset .. offset + base - 1` packs to
  the span code `(start - offset) * base + (end - offset)`, below `span_limit = base**2`;
  a triplet to `(aspect code * span_limit + opinion code) * len(sentiments) + sentiment
  index`, below `triplet_limit`. A set of spans or triplets is then an array of distinct
  integers (`unique_codes`), and set intersection a membership count.

  Codes are int64 while their limit fits (`dtype_for`), else Python ints in object
  arrays, so that no range of word indices can overflow.

  Attributes:
    offset: the smallest representable word index.
    base: how many consecutive word indices are representable.
    sentiments: the sentiment names, in the order of their indices.
  """

  offset: int
  base: int
  sentiments: Tuple[str, ...]

  def __post_init__(self):
    if self.base < 1:
      raise ValueError(f"TripletCodec base must be positive, got {self.base}")
    if not self.sentiments or len(set(self.sentiments)) != len(self.sentiments):
      raise ValueError(f"TripletCodec needs distinct sentiment names, got {self.sentiments}")

  @classmethod
  def covering(cls, word_indices: np.ndarray, sentiments: Sequence[str]) -> "TripletCodec":
    """The smallest codec that represents every value of `word_indices` (any shape)."""
    values = np.asarray(word_indices)
    if values.size == 0:
      return cls(offset=0, base=1, sentiments=tuple(sentiments))
    low = int(values.min())
    return cls(offset=low, base=int(values.max()) - low + 1, sentiments=tuple(sentiments))

  @property
  def span_limit(self) -> int:
    """The number of span codes (base**2)."""
    return self.base * self.base

  @property
  def triplet_limit(self) -> int:
    """The number of triplet codes (span_limit**2 * number of sentiments)."""
    return self.span_limit * self.span_limit * len(self.sentiments)

  @staticmethod
  def dtype_for(limit: int) -> np.dtype:
    """int64 when every integer below `limit` fits in it, else object (Python ints)."""
    return np.dtype(np.int64) if limit - 1 <= _INT64_MAX else np.dtype(object)

  def span_codes(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Codes of the spans [starts, ends) (arrays of representable word indices)."""
    dtype = self.dtype_for(self.span_limit)
    return ((np.asarray(starts).astype(dtype) - self.offset) * self.base +
            (np.asarray(ends).astype(dtype) - self.offset))

  def triplet_codes(self, aspect_codes: np.ndarray, opinion_codes: np.ndarray,
                    sentiment_indices: np.ndarray) -> np.ndarray:
    """Codes of triplets given their aspect and opinion span codes and sentiment indices."""
    dtype = self.dtype_for(self.triplet_limit)
    return ((np.asarray(aspect_codes).astype(dtype) * self.span_limit + np.asarray(opinion_codes).astype(dtype)) *
            len(self.sentiments) + np.asarray(sentiment_indices).astype(dtype))

  def split_triplets(self, codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aspect span codes, opinion span codes, sentiment indices) of triplet codes."""
    codes = np.asarray(codes).astype(self.dtype_for(self.triplet_limit), copy=False)
    pairs, sentiments = codes // len(self.sentiments), codes % len(self.sentiments)
    aspects, opinions = pairs // self.span_limit, pairs % self.span_limit
    dtype = self.dtype_for(self.span_limit)
    return aspects.astype(dtype), opinions.astype(dtype), sentiments.astype(np.int64)

  def span_bounds(self, codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) word indices of span codes."""
    # (`np.divmod` has no loop for object arrays.)
    codes = np.asarray(codes).astype(self.dtype_for(self.span_limit), copy=False)
    return codes // self.base + self.offset, codes % self.base + self.offset

  def span_list(self, codes: np.ndarray) -> List[Span]:
    """The spans of span codes, in code order, as (start, end) pairs of Python ints."""
    starts, ends = self.span_bounds(codes)
    return list(zip(starts.tolist(), ends.tolist()))

  def spans(self, codes: np.ndarray) -> Set[Span]:
    """The spans of span codes, as a set."""
    return set(self.span_list(codes))

  def triplet_list(self, codes: np.ndarray) -> List[Triplet]:
    """The `Triplet`s of triplet codes, in code order (spans of Python ints)."""
    aspects, opinions, sentiments = self.split_triplets(codes)
    aspect_starts, aspect_ends = self.span_bounds(aspects)
    opinion_starts, opinion_ends = self.span_bounds(opinions)
    names = self.sentiments
    with _collector_paused():
      return [Triplet(aspect=(a0, a1), opinion=(o0, o1), sentiment=names[s])
              for a0, a1, o0, o1, s in zip(aspect_starts.tolist(), aspect_ends.tolist(), opinion_starts.tolist(),
                                           opinion_ends.tolist(), sentiments.tolist())]

  def triplets(self, codes: np.ndarray) -> Set[Triplet]:
    """The `Triplet`s of triplet codes, as a set."""
    return set(self.triplet_list(codes))

  def _span_code(self, span: Span) -> Optional[int]:
    start, end = int(span[0]) - self.offset, int(span[1]) - self.offset
    if 0 <= start < self.base and 0 <= end < self.base:
      return start * self.base + end
    return None

  def encode_spans(self, spans: Iterable[Span]) -> np.ndarray:
    """The distinct codes, ascending, of those `spans` the codec can represent.

    A span outside the codec's range is left out: it cannot equal any span it packs.
    """
    codes = {self._span_code(span) for span in spans} - {None}
    return np.array(sorted(codes), dtype=self.dtype_for(self.span_limit))

  def encode_triplets(self, triplets: Iterable[Triplet]) -> np.ndarray:
    """The distinct codes, ascending, of those `triplets` the codec can represent.

    A triplet with a span outside the codec's range or a sentiment not in `sentiments` is
    left out: it cannot equal any triplet the codec packs.
    """
    index = {name: position for position, name in enumerate(self.sentiments)}
    span_limit, num_sentiments = self.span_limit, len(self.sentiments)
    codes = set()
    for triplet in triplets:
      aspect, opinion = self._span_code(triplet.aspect), self._span_code(triplet.opinion)
      sentiment = index.get(str(triplet.sentiment))
      if aspect is not None and opinion is not None and sentiment is not None:
        codes.add((aspect * span_limit + opinion) * num_sentiments + sentiment)
    return np.array(sorted(codes), dtype=self.dtype_for(self.triplet_limit))


def _check_codes(codes: np.ndarray, where: str) -> np.ndarray:
  """Distinct codes, ascending, of a 1-D array of integer codes."""
  codes = np.asarray(codes)
  if codes.ndim != 1:
    raise ValueError(f"{where}: expected a 1-D array of codes, got shape {codes.shape}")
  if codes.size == 0:
    return codes.astype(np.int64)
  if codes.dtype.kind not in "iuO":
    raise TypeError(f"{where}: expected integer codes, got dtype {codes.dtype}")
  return unique_codes(codes)


class TripletScorer:
  """Accumulates triplet, aspect and opinion counts sentence by sentence.

  Usage in a loop over decoded batches:

    scorer = TripletScorer()
    for gold_triplets, predicted_triplets in sentences:
      scorer.add(gold_triplets, predicted_triplets)
    scores = scorer.result()  # {"triplet": PRF, "aspect": PRF, "opinion": PRF}
  """

  def __init__(self) -> None:
    self._totals = {name: PRF(0, 0, 0) for name in SCORE_NAMES}
    self._sentences = 0

  @property
  def num_sentences(self) -> int:
    """How many sentences were added."""
    return self._sentences

  def add(
      self,
      gold: Iterable[Triplet],
      predicted: Iterable[Triplet],
      *,
      predicted_aspects: Optional[Iterable[Span]] = None,
      predicted_opinions: Optional[Iterable[Span]] = None,
  ) -> None:
    """Adds one sentence.

    Args:
      gold: the sentence's gold triplets.
      predicted: the sentence's predicted triplets.
      predicted_aspects: the aspect spans the model kept, when it can report spans that
        are in no triplet; by default the aspect spans of `predicted`.
      predicted_opinions: likewise for opinion spans.
    """
    where = f"sentence {self._sentences}"
    gold_set = _check_triplets(gold, where + " (gold)")
    predicted_set = _check_triplets(predicted, where + " (predicted)")
    if predicted_aspects is None:
      predicted_aspect_spans = {triplet.aspect for triplet in predicted_set}
    else:
      predicted_aspect_spans = _normalize_spans(predicted_aspects)
    if predicted_opinions is None:
      predicted_opinion_spans = {triplet.opinion for triplet in predicted_set}
    else:
      predicted_opinion_spans = _normalize_spans(predicted_opinions)
    self._totals["triplet"] += count_set_matches(gold_set, predicted_set)
    self._totals["aspect"] += count_set_matches({t.aspect for t in gold_set}, predicted_aspect_spans)
    self._totals["opinion"] += count_set_matches({t.opinion for t in gold_set}, predicted_opinion_spans)
    self._sentences += 1

  def add_codes(
      self,
      gold: Iterable[Triplet],
      predicted: np.ndarray,
      codec: TripletCodec,
      *,
      predicted_aspects: Optional[np.ndarray] = None,
      predicted_opinions: Optional[np.ndarray] = None,
  ) -> None:
    """Adds one sentence whose predictions are `codec` codes, without building objects.

    The counts are exactly those of `add(gold, codec.triplets(predicted),
    predicted_aspects=codec.spans(predicted_aspects), ...)`.

    Args:
      gold: the sentence's gold triplets (`Triplet` objects, as for `add`).
      predicted: 1-D int array, the predicted triplets' codes (repeats count once).
      codec: the codec that packed them.
      predicted_aspects: 1-D int array, span codes of the aspect spans the model kept;
        by default the aspect spans of `predicted`.
      predicted_opinions: likewise for opinion spans.
    """
    where = f"sentence {self._sentences}"
    gold_set = _check_triplets(gold, where + " (gold)")
    predicted = _check_codes(predicted, where + " (predicted)")
    if predicted_aspects is None or predicted_opinions is None:
      triplet_aspects, triplet_opinions, _ = codec.split_triplets(predicted)
    if predicted_aspects is None:
      aspects = unique_codes(triplet_aspects)
    else:
      aspects = _check_codes(predicted_aspects, where + " (predicted aspects)")
    if predicted_opinions is None:
      opinions = unique_codes(triplet_opinions)
    else:
      opinions = _check_codes(predicted_opinions, where + " (predicted opinions)")
    gold_aspects, gold_opinions = {t.aspect for t in gold_set}, {t.opinion for t in gold_set}
    for name, gold_items, encode, predicted_codes in (("triplet", gold_set, codec.encode_triplets, predicted),
                                                      ("aspect", gold_aspects, codec.encode_spans, aspects),
                                                      ("opinion", gold_opinions, codec.encode_spans, opinions)):
      correct = _count_members(encode(gold_items), predicted_codes) if gold_items and predicted_codes.size else 0
      self._totals[name] += PRF(gold=len(gold_items), predicted=int(predicted_codes.size), correct=correct)
    self._sentences += 1

  def result(self) -> Dict[str, PRF]:
    """The counts so far, keyed by `triplet`, `aspect` and `opinion`."""
    return dict(self._totals)


def _index_by_id(examples: Sequence[Example], source: str) -> Dict[str, Example]:
  by_id: Dict[str, Example] = {}
  for position, example in enumerate(examples):
    if example.id in by_id:
      raise DataError(f"{source}: record {position} repeats id {example.id!r}")
    by_id[example.id] = example
  return by_id


ALIGNMENTS = ("id", "order")
# The entry points' `--align` help (experiments.evaluate, experiments.analyze).
ALIGNMENT_HELP = ("How predictions meet gold records: by `orig_id`, or by order (the i-th prediction is the i-th "
                  "gold record; the released code's prediction files carry no ids).")


def score(
    gold: Sequence[Example],
    predicted: Sequence[Example],
    *,
    gold_source: str = "gold",
    predicted_source: str = "predictions",
    align: str = "id",
) -> Dict[str, PRF]:
  """Scores predicted examples against gold examples, aligned by example id or by order.

  Every gold sentence must have exactly one prediction (possibly with no triplets) and
  vice versa, with the same tokens: scoring a partial split would silently inflate or
  deflate the numbers.

  Args:
    gold: the gold examples of a full split.
    predicted: the predicted examples (in any order when aligned by id).
    gold_source: how error messages name the gold side (usually its file path).
    predicted_source: how error messages name the predicted side.
    align: "id" pairs examples by id; "order" pairs the i-th prediction with the i-th gold
      example (the released code's prediction files carry no ids).

  Returns:
    `{"triplet": PRF, "aspect": PRF, "opinion": PRF}`.

  Raises:
    DataError: an id is repeated, a prediction has no gold example or vice versa, or the
      two sides disagree on a sentence's tokens.
    ValueError: unknown `align`.
  """
  if align == "id":
    pairs = _pairs_by_id(gold, predicted, gold_source, predicted_source)
  elif align == "order":
    pairs = _pairs_by_order(gold, predicted, gold_source, predicted_source)
  else:
    raise ValueError(f"unknown alignment {align!r}; expected one of {ALIGNMENTS}")
  scorer = TripletScorer()
  for where, gold_example, prediction in pairs:
    if tuple(prediction.tokens) != tuple(gold_example.tokens):
      raise DataError(f"{predicted_source}: record {where} has different tokens from the gold record in {gold_source}")
    scorer.add(gold_example.triplets, prediction.triplets, **predicted_terms(prediction))
  return scorer.result()


def _pairs_by_id(gold: Sequence[Example], predicted: Sequence[Example], gold_source: str,
                 predicted_source: str) -> List[Tuple[str, Example, Example]]:
  """(record name, gold, prediction) per gold example, matched by id."""
  gold_by_id = _index_by_id(gold, gold_source)
  predicted_by_id = _index_by_id(predicted, predicted_source)
  for example_id in predicted_by_id:
    if example_id not in gold_by_id:
      raise DataError(f"{predicted_source}: record {example_id!r} has no gold example in {gold_source}")
  pairs = []
  for example_id, gold_example in gold_by_id.items():
    if example_id not in predicted_by_id:
      raise DataError(f"{predicted_source}: no prediction for gold record {example_id!r} of {gold_source}")
    pairs.append((repr(example_id), gold_example, predicted_by_id[example_id]))
  return pairs


def _pairs_by_order(gold: Sequence[Example], predicted: Sequence[Example], gold_source: str,
                    predicted_source: str) -> List[Tuple[str, Example, Example]]:
  """(record name, gold, prediction) per position."""
  if len(gold) != len(predicted):
    raise DataError(f"{predicted_source}: {len(predicted)} records but {gold_source} has {len(gold)} (aligned by "
                    f"order, the two files must hold the same sentences in the same order)")
  return [(str(index), gold_example, prediction)
          for index, (gold_example, prediction) in enumerate(zip(gold, predicted))]


def predicted_terms(prediction: Example) -> Dict[str, Optional[List[Span]]]:
  """`TripletScorer.add`'s term arguments for a prediction: its typed entities, if it has them.

  Returns:
    `{"predicted_aspects": spans, "predicted_opinions": spans}`, the spans of its entities
    typed target and opinion, or both None (terms from the triplets) without `entities`.
  """
  if prediction.entities is None:
    return {"predicted_aspects": None, "predicted_opinions": None}
  return {"predicted_aspects": [entity.span for entity in prediction.entities if entity.type == TARGET],
          "predicted_opinions": [entity.span for entity in prediction.entities if entity.type == OPINION]}


def scores_as_dict(scores: Dict[str, PRF]) -> Dict[str, Dict[str, float]]:
  """The JSON form of `score`'s result: `{name: {precision, recall, f1, gold, ...}}`."""
  return {name: scores[name].as_dict() for name in SCORE_NAMES}
