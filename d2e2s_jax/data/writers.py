"""Writers for the two ASTE formats, so a dataset round-trips through `readers`.

`read_examples(write_examples(examples))` equals `examples` for examples the target
format can hold:

* "d2e2s" JSON keeps everything. Entities are written once per distinct (type, span),
  in order of first use by a triplet (the benchmark files repeat an entity per
  triplet; both layouts read back to the same triplets). `pos` and `dependency` are
  written when the example has them, verbatim.
* "aste_v2" text holds words and triplets only; ids become `<file stem>:<line>` on
  reading and the parse is lost. A word containing a space, a line break or "####"
  cannot be written and raises DataError.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Sequence, Tuple, Union

from d2e2s_jax.data.examples import OPINION, SENTIMENT_ABBREVIATIONS, TARGET, DataError, Example

PathLike = Union[str, pathlib.Path]


def example_to_json_record(example: Example) -> Dict[str, object]:
  """The D2E2S JSON record of one example."""
  entity_index: Dict[Tuple[str, int, int], int] = {}
  entities: List[Dict[str, object]] = []
  sentiments = []

  def index_of(entity_type: str, span: Tuple[int, int]) -> int:
    key = (entity_type, span[0], span[1])
    if key not in entity_index:
      entity_index[key] = len(entities)
      entities.append({"type": entity_type, "start": span[0], "end": span[1]})
    return entity_index[key]

  for triplet in example.triplets:
    head = index_of(TARGET, triplet.aspect)
    tail = index_of(OPINION, triplet.opinion)
    sentiments.append({"type": triplet.sentiment, "head": head, "tail": tail})
  record: Dict[str, object] = {"tokens": list(example.tokens), "entities": entities, "sentiments": sentiments}
  if example.pos_tags is not None:
    record["pos"] = [[word, tag] for word, tag in zip(example.parse_words, example.pos_tags)]
  if example.dependency is not None:
    record["dependency"] = [list(entry) for entry in example.dependency]
  record["orig_id"] = example.id
  return record


def example_to_text_line(example: Example, where: str = "") -> str:
  """The raw ASTE-V2 line of one example (without the line break)."""
  for number, token in enumerate(example.tokens):
    if " " in token or "\n" in token or "\r" in token or "####" in token:
      raise DataError(f"{where or example.id}: word {number} {token!r} cannot be written in the aste_v2 format")
  triplets = [(list(range(*triplet.aspect)), list(range(*triplet.opinion)), SENTIMENT_ABBREVIATIONS[triplet.sentiment])
              for triplet in example.triplets]
  return " ".join(example.tokens) + "####" + repr(triplets)


def write_examples(examples: Sequence[Example], path: PathLike, format: str = "d2e2s") -> None:  # pylint: disable=redefined-builtin
  """Writes examples in the "d2e2s" (JSON) or "aste_v2" (text) format.

  Raises:
    DataError: an example cannot be expressed in the format (names the file and example).
    ValueError: unknown format.
  """
  path = pathlib.Path(path)
  if format == "d2e2s":
    text = json.dumps([example_to_json_record(example) for example in examples], ensure_ascii=False)
  elif format == "aste_v2":
    text = "".join(example_to_text_line(example, f"{path}, example {index} ({example.id})") + "\n"
                   for index, example in enumerate(examples))
  else:
    raise ValueError(f"unknown dataset format {format!r}; expected 'd2e2s' or 'aste_v2'")
  path.write_text(text, encoding="utf-8")
