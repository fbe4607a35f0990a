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
  and fails, naming the id, when one side has a sentence the other lacks.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Optional, Sequence, Set

from d2e2s_jax.data.examples import DataError, Example, Span, Triplet

SCORE_NAMES = ("triplet", "aspect", "opinion")


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

  def result(self) -> Dict[str, PRF]:
    """The counts so far, keyed by `triplet`, `aspect` and `opinion`."""
    return dict(self._totals)


def score_triplet_sets(
    gold: Sequence[Iterable[Triplet]],
    predicted: Sequence[Iterable[Triplet]],
) -> Dict[str, PRF]:
  """Scores position-aligned per-sentence triplet collections.

  Args:
    gold: one collection of gold triplets per sentence.
    predicted: one collection of predicted triplets per sentence, in the same order.

  Returns:
    `{"triplet": PRF, "aspect": PRF, "opinion": PRF}`.

  Raises:
    ValueError: the two sequences have different lengths.
  """
  if len(gold) != len(predicted):
    raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted sentences; they must align")
  scorer = TripletScorer()
  for gold_triplets, predicted_triplets in zip(gold, predicted):
    scorer.add(gold_triplets, predicted_triplets)
  return scorer.result()


def _index_by_id(examples: Sequence[Example], source: str) -> Dict[str, Example]:
  by_id: Dict[str, Example] = {}
  for position, example in enumerate(examples):
    if example.id in by_id:
      raise DataError(f"{source}: record {position} repeats id {example.id!r}")
    by_id[example.id] = example
  return by_id


def score(
    gold: Sequence[Example],
    predicted: Sequence[Example],
    *,
    gold_source: str = "gold",
    predicted_source: str = "predictions",
) -> Dict[str, PRF]:
  """Scores predicted examples against gold examples, aligned by example id.

  Every gold sentence must have exactly one prediction (possibly with no triplets) and
  vice versa, with the same tokens: scoring a partial split would silently inflate or
  deflate the numbers.

  Args:
    gold: the gold examples of a full split.
    predicted: the predicted examples, in any order.
    gold_source: how error messages name the gold side (usually its file path).
    predicted_source: how error messages name the predicted side.

  Returns:
    `{"triplet": PRF, "aspect": PRF, "opinion": PRF}`.

  Raises:
    DataError: an id is repeated, a prediction has no gold example or vice versa, or the
      two sides disagree on a sentence's tokens.
  """
  gold_by_id = _index_by_id(gold, gold_source)
  predicted_by_id = _index_by_id(predicted, predicted_source)
  for example_id in predicted_by_id:
    if example_id not in gold_by_id:
      raise DataError(f"{predicted_source}: record {example_id!r} has no gold example in {gold_source}")
  scorer = TripletScorer()
  for example_id, gold_example in gold_by_id.items():
    prediction = predicted_by_id.get(example_id)
    if prediction is None:
      raise DataError(f"{predicted_source}: no prediction for gold record {example_id!r} of {gold_source}")
    if tuple(prediction.tokens) != tuple(gold_example.tokens):
      raise DataError(
          f"{predicted_source}: record {example_id!r} has different tokens from the gold record in {gold_source}")
    scorer.add(gold_example.triplets, prediction.triplets)
  return scorer.result()


def scores_as_dict(scores: Dict[str, PRF]) -> Dict[str, Dict[str, float]]:
  """The JSON form of `score`'s result: `{name: {precision, recall, f1, gold, ...}}`."""
  return {name: scores[name].as_dict() for name in SCORE_NAMES}
