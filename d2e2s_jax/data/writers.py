"""Writers for the two ASTE formats, so a dataset round-trips through `readers`.

`read_examples(write_examples(examples))` equals `examples` for examples the target
format can hold:

* "d2e2s" JSON keeps everything. An example without `entities` (gold) has its entities
  written once per distinct (type, span), in order of first use by a triplet (the
  benchmark files repeat an entity per triplet; both layouts read back to the same
  triplets). An example with `entities` (a prediction) has exactly those written, in
  order, and each sentiment points at the entity with its head (tail) span, the first
  one typed `target` (`opinion`) if there is one, else the first with that span; a
  triplet span that is none of the entities raises DataError (a decoder's triplets come
  from its kept spans, so a missing one is a bug, not something to paper over).
  `triplet_scores` become each sentiment's `score`. Such a file reads back equal with
  `readers.read_predictions` (gold files with `readers.read_examples`). `pos` and
  `dependency` are written when the example has them, verbatim.
* "aste_v2" text holds words and triplets only; ids become `<file stem>:<line>` on
  reading and the parse, entities and scores are lost. A word containing a space, a
  line break or "####", or an INVALID triplet, cannot be written and raises DataError.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

from d2e2s_jax import fileio
from d2e2s_jax.data.examples import OPINION, SENTIMENT_ABBREVIATIONS, TARGET, DataError, Example

PathLike = Union[str, pathlib.Path]


def example_to_json_record(example: Example, where: str = "") -> Dict[str, object]:
  """The D2E2S JSON record of one example.

  Raises:
    DataError: a triplet span of an example with `entities` is none of them.
  """
  if example.entities is None:
    entities, sentiments = _entities_from_triplets(example)
  else:
    entities, sentiments = _listed_entities(example, where or example.id)
  if example.triplet_scores is not None:
    for sentiment, score in zip(sentiments, example.triplet_scores):
      sentiment["score"] = float(score)
  record: Dict[str, object] = {"tokens": list(example.tokens), "entities": entities, "sentiments": sentiments}
  if example.pos_tags is not None:
    record["pos"] = [[word, tag] for word, tag in zip(example.parse_words, example.pos_tags)]
  if example.dependency is not None:
    record["dependency"] = [list(entry) for entry in example.dependency]
  record["orig_id"] = example.id
  return record


def _entity_record(entity_type: str, span: Tuple[int, int]) -> Dict[str, object]:
  return {"type": entity_type, "start": int(span[0]), "end": int(span[1])}  # numpy ints from a decoder too


def _entities_from_triplets(example: Example) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
  """Gold layout: one entity per distinct (type, span) of the triplets, in order of first use."""
  entity_index: Dict[Tuple[str, Tuple[int, int]], int] = {}
  entities: List[Dict[str, object]] = []

  def index_of(entity_type: str, span: Tuple[int, int]) -> int:
    key = (entity_type, tuple(span))
    if key not in entity_index:
      entity_index[key] = len(entities)
      entities.append(_entity_record(entity_type, span))
    return entity_index[key]

  sentiments = [{"type": triplet.sentiment, "head": index_of(TARGET, triplet.aspect),
                 "tail": index_of(OPINION, triplet.opinion)} for triplet in example.triplets]
  return entities, sentiments


def _listed_entities(example: Example, where: str) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
  """Prediction layout: the example's entities as listed, sentiments pointing at them."""
  first: Dict[Tuple[Optional[str], Tuple[int, int]], int] = {}  # (type or None for any, span) -> index
  for index, entity in enumerate(example.entities):
    first.setdefault((entity.type, tuple(entity.span)), index)
    first.setdefault((None, tuple(entity.span)), index)

  def index_of(role: str, preferred_type: str, span: Tuple[int, int], number: int) -> int:
    index = first.get((preferred_type, tuple(span)), first.get((None, tuple(span))))
    if index is None:
      raise DataError(f"{where}: triplet {number} {role} span {list(span)} is none of the example's entities")
    return index

  entities = [_entity_record(entity.type, entity.span) for entity in example.entities]
  sentiments = [{"type": triplet.sentiment, "head": index_of("head", TARGET, triplet.aspect, number),
                 "tail": index_of("tail", OPINION, triplet.opinion, number)}
                for number, triplet in enumerate(example.triplets)]
  return entities, sentiments


def example_to_text_line(example: Example, where: str = "") -> str:
  """The raw ASTE-V2 line of one example (without the line break)."""
  for number, token in enumerate(example.tokens):
    if " " in token or "\n" in token or "\r" in token or "####" in token:
      raise DataError(f"{where or example.id}: word {number} {token!r} cannot be written in the aste_v2 format")
  for number, triplet in enumerate(example.triplets):
    if triplet.sentiment not in SENTIMENT_ABBREVIATIONS:
      raise DataError(f"{where or example.id}: triplet {number} sentiment {triplet.sentiment!r} cannot be written in "
                      f"the aste_v2 format")
  triplets = [(list(range(*triplet.aspect)), list(range(*triplet.opinion)), SENTIMENT_ABBREVIATIONS[triplet.sentiment])
              for triplet in example.triplets]
  return " ".join(example.tokens) + "####" + repr(triplets)


def format_examples(examples: Sequence[Example], format: str = "d2e2s", where: str = "") -> str:  # pylint: disable=redefined-builtin
  """The text of a "d2e2s" (JSON) or "aste_v2" (text) file holding `examples`.

  Raises:
    DataError: an example cannot be expressed in the format (names `where` and the example).
    ValueError: unknown format.
  """
  if format == "d2e2s":
    return json.dumps([example_to_json_record(example, f"{where}, example {index} ({example.id})")
                       for index, example in enumerate(examples)], ensure_ascii=False)
  if format == "aste_v2":
    return "".join(example_to_text_line(example, f"{where}, example {index} ({example.id})") + "\n"
                   for index, example in enumerate(examples))
  raise ValueError(f"unknown dataset format {format!r}; expected 'd2e2s' or 'aste_v2'")


def write_examples(examples: Sequence[Example], path: PathLike, format: str = "d2e2s") -> None:  # pylint: disable=redefined-builtin
  """Writes examples in the "d2e2s" (JSON) or "aste_v2" (text) format, atomically.

  "d2e2s" holds predictions too (`entities`, `triplet_scores`; see the module doc).

  Raises:
    DataError: an example cannot be expressed in the format (names the file and example).
    ValueError: unknown format.
  """
  path = pathlib.Path(path)
  fileio.write_text_atomic(path, format_examples(examples, format, str(path)))  # no half-written file on failure
