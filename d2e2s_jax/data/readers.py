"""Readers for the two ASTE formats, with one clear error per bad record.

Formats (see docs/d2e2s-reference.md, "Data formats"):

* "d2e2s": a JSON list of `{tokens, entities, sentiments, pos, dependency, orig_id}`.
  `tokens`, `entities` and `sentiments` are required; `pos`, `dependency` and `orig_id`
  are optional (an example without `dependency` has no parse; without `orig_id` its id
  is `<file stem>:<index>`). Entities that no sentiment refers to are dropped: an
  `Example` holds triplets only (the benchmark files have none).
* "aste_v2": one sentence per line, `w1 w2 ...####[([aspect idx], [opinion idx], 'POS'),
  ...]`, 0-based contiguous word indices. Words are separated by single spaces (an empty
  word between two spaces is kept, so files written by `writers` round-trip). Ids are
  `<file stem>:<line>`.

Gold files (`read_examples`) are strict: a sentiment's head must be a `target` entity,
its tail an `opinion` entity, its type one of `SENTIMENTS`. Prediction files
(`read_predictions`, D2E2S JSON) are what a decoder writes, the released one included: a
sentiment may pair any two of the record's entities (the decoder pairs every ordered pair
of kept spans, whatever their types), its type may be any of `SENTIMENT_OUTPUTS`
(INVALID included), and it may carry a `score` in [0, 1] (all of a file's sentiments or
none of them). The predicted `Example` keeps every entity in `entities` and the scores in
`triplet_scores`. Everything else (tokens, spans, entity types, indices, parse) is
checked as strictly as in gold files.

Every problem is a `DataError` whose message names the file and the record (1-based line
for text, 0-based index for JSON). With `skip_invalid=True` bad records are skipped,
logged and counted (`read_examples_with_errors` also returns the errors).
"""

from __future__ import annotations

import ast
import json
import logging
import pathlib
from typing import List, Optional, Tuple, Union

from d2e2s_jax.data.examples import (ENTITY_TYPES, OPINION, SENTIMENT_ABBREVIATIONS, SENTIMENT_OUTPUTS, SENTIMENTS,
                                     TARGET, DataError, Entity, Example, Span, Triplet)
from d2e2s_jax.data.parses import validate_dependency, word_level_parse

FORMATS = ("d2e2s", "aste_v2")
PathLike = Union[str, pathlib.Path]
_SENTIMENT_OF_ABBREVIATION = {short: full for full, short in SENTIMENT_ABBREVIATIONS.items()}


def read_examples(path: PathLike, format: str = "d2e2s", *, skip_invalid: bool = False) -> List[Example]:  # pylint: disable=redefined-builtin
  """Reads a dataset file.

  Args:
    path: the file.
    format: "d2e2s" (JSON) or "aste_v2" (raw `####` text).
    skip_invalid: skip bad records (logged with a count) instead of raising.

  Returns:
    The examples in file order.

  Raises:
    DataError: on the first bad record (or an unreadable file) unless skip_invalid.
  """
  examples, _ = read_examples_with_errors(path, format, skip_invalid=skip_invalid)
  return examples


def read_examples_with_errors(path: PathLike, format: str = "d2e2s", *,  # pylint: disable=redefined-builtin
                              skip_invalid: bool = True) -> Tuple[List[Example], List[DataError]]:
  """Like `read_examples`, also returning the errors of the skipped records."""
  if format not in FORMATS:
    raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS}")
  return _read(pathlib.Path(path), format, predictions=False, skip_invalid=skip_invalid)


def read_predictions(path: PathLike) -> List[Example]:
  """Reads a D2E2S JSON predictions file (ours or the released code's).

  Args:
    path: the file.

  Returns:
    The predicted examples in file order; each has `entities` (every typed span of its
    record, in file order), `triplets` (one per sentiment, head span then tail span)
    and `triplet_scores` (None when the file has no scores).

  Raises:
    DataError: on the first bad record (or an unreadable file).
  """
  examples, _ = _read(pathlib.Path(path), "d2e2s", predictions=True, skip_invalid=False)
  return examples


def _read(path: pathlib.Path, format: str, *, predictions: bool,  # pylint: disable=redefined-builtin
          skip_invalid: bool) -> Tuple[List[Example], List[DataError]]:
  """Reads and validates a file's records; bad ones raise or are skipped and returned."""
  try:
    raw_bytes = path.read_bytes()
  except OSError as error:
    raise DataError(f"{path}: cannot read the file ({error.strerror})") from error
  try:
    text = raw_bytes.decode("utf-8")
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not valid UTF-8 at byte {error.start}") from error
  if format == "d2e2s":
    records = _json_records(path, text, predictions)
  else:
    records = _text_records(path, text)
  examples, errors = [], []
  for parse_record in records:
    try:
      examples.append(parse_record())
    except DataError as error:
      if not skip_invalid:
        raise
      errors.append(error)
      logging.warning("skipping %s", error)
  if errors:
    logging.warning("%s: skipped %d invalid record(s) of %d", path, len(errors), len(errors) + len(examples))
  return examples, errors


def _json_records(path: pathlib.Path, text: str, predictions: bool):
  """Yields a thunk per JSON record that builds its Example or raises."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as error:
    raise DataError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from error
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  for index, record in enumerate(data):
    where = f"{path}, record {index}"
    yield lambda record=record, where=where, index=index: _parse_json_record(record, where, f"{path.stem}:{index}",
                                                                             predictions)


def _text_records(path: pathlib.Path, text: str):
  """Yields a thunk per non-blank line of a raw ASTE-V2 file that builds its Example or raises."""
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    where = f"{path}, line {number}"
    yield lambda line=line, where=where, number=number: _parse_text_line(line, where, f"{path.stem}:{number}")


def _check_span(start: object, end: object, num_words: int, where: str, what: str) -> Span:
  if type(start) is not int or type(end) is not int:
    raise DataError(f"{where}: {what} has non-integer bounds {start!r}, {end!r}")
  if not 0 <= start < end <= num_words:
    raise DataError(f"{where}: {what} [{start}, {end}) is empty or outside the sentence of {num_words} words")
  return (start, end)


def _check_tokens(tokens: object, where: str) -> Tuple[str, ...]:
  if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
    raise DataError(f"{where}: 'tokens' must be a list of strings")
  if not tokens:
    raise DataError(f"{where}: empty sentence")
  return tuple(tokens)


def _parse_json_record(record: object, where: str, default_id: str, predictions: bool = False) -> Example:
  """Builds an Example from one D2E2S JSON record (a gold one, or a prediction: see the module doc)."""
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
  missing = [key for key in ("tokens", "entities", "sentiments") if key not in record]
  if missing:
    raise DataError(f"{where}: missing field(s) {missing}")
  tokens = _check_tokens(record["tokens"], where)
  entities = _parse_entities(record["entities"], len(tokens), where)
  triplets, scores = _parse_sentiments(record["sentiments"], entities, where, predictions)
  example_id = record.get("orig_id", default_id)
  if type(example_id) is int:  # some ASTE exports number their sentences
    example_id = str(example_id)
  if not isinstance(example_id, str) or not example_id:
    raise DataError(f"{where}: 'orig_id' must be a non-empty string or an integer")
  pos_tags = parse_words = None
  if record.get("pos") is not None:
    pos = record["pos"]
    if (not isinstance(pos, list) or not pos or
        not all(isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item) for item in pos)):
      raise DataError(f"{where}: 'pos' must be a non-empty list of [word, tag] string pairs")
    parse_words = tuple(word for word, _ in pos)
    pos_tags = tuple(tag for _, tag in pos)
  dependency = heads = relations = None
  if record.get("dependency") is not None:
    words = parse_words if parse_words is not None else tokens
    dependency = validate_dependency(record["dependency"], len(words), where)
    heads, relations = word_level_parse(tokens, words, dependency)
    parse_words = words
  return Example(id=example_id, tokens=tokens, triplets=triplets, pos_tags=pos_tags, heads=heads,
                 relations=relations, dependency=dependency, parse_words=parse_words,
                 entities=tuple(entities) if predictions else None, triplet_scores=scores)


def _parse_entities(entities: object, num_words: int, where: str) -> List[Entity]:
  """The typed spans of a record's `entities` list."""
  if not isinstance(entities, list):
    raise DataError(f"{where}: 'entities' must be a list")
  parsed = []
  for number, entity in enumerate(entities):
    if not isinstance(entity, dict) or any(key not in entity for key in ("type", "start", "end")):
      raise DataError(f"{where}: entity {number} must be an object with type, start and end")
    if entity["type"] not in ENTITY_TYPES:
      raise DataError(f"{where}: entity {number} has unknown type {entity['type']!r}; expected one of {ENTITY_TYPES}")
    parsed.append(Entity(entity["type"], _check_span(entity["start"], entity["end"], num_words, where,
                                                     f"entity {number}")))
  return parsed


def _parse_sentiments(sentiments: object, entities: List[Entity], where: str,
                      predictions: bool) -> Tuple[Tuple[Triplet, ...], Optional[Tuple[float, ...]]]:
  """A record's triplets (head span, tail span, sentiment) and, for scored predictions, their scores."""
  if not isinstance(sentiments, list):
    raise DataError(f"{where}: 'sentiments' must be a list")
  names = SENTIMENT_OUTPUTS if predictions else SENTIMENTS
  scored = predictions and bool(sentiments) and isinstance(sentiments[0], dict) and "score" in sentiments[0]
  triplets, scores = [], []
  for number, sentiment in enumerate(sentiments):
    if not isinstance(sentiment, dict) or any(key not in sentiment for key in ("type", "head", "tail")):
      raise DataError(f"{where}: sentiment {number} must be an object with type, head and tail")
    if sentiment["type"] not in names:
      raise DataError(f"{where}: sentiment {number} has unknown type {sentiment['type']!r}; expected one of {names}")
    for role, expected_type in (("head", TARGET), ("tail", OPINION)):
      entity_index = sentiment[role]
      if type(entity_index) is not int or not 0 <= entity_index < len(entities):
        raise DataError(f"{where}: sentiment {number} {role} {entity_index!r} points at a missing entity "
                        f"(the record has {len(entities)})")
      if not predictions and entities[entity_index].type != expected_type:
        raise DataError(f"{where}: sentiment {number} {role} is entity {entity_index} of type "
                        f"{entities[entity_index].type!r}, expected {expected_type!r}")
    if predictions and ("score" in sentiment) != scored:
      raise DataError(f"{where}: sentiment {number} {'has' if 'score' in sentiment else 'lacks'} a score, sentiment 0 "
                      f"{'has one' if scored else 'does not'} (give every sentiment a score or none)")
    if scored:
      score = sentiment["score"]
      if type(score) not in (int, float) or not 0.0 <= score <= 1.0:
        raise DataError(f"{where}: sentiment {number} score {score!r} is not a number in [0, 1]")
      scores.append(float(score))
    triplets.append(Triplet(entities[sentiment["head"]].span, entities[sentiment["tail"]].span, sentiment["type"]))
  return tuple(triplets), tuple(scores) if scored else None


def _contiguous_span(indices: object, num_words: int, where: str, what: str) -> Span:
  if not isinstance(indices, list) or not indices or not all(type(index) is int for index in indices):
    raise DataError(f"{where}: {what} must be a non-empty list of word indices, got {indices!r}")
  if indices != list(range(indices[0], indices[0] + len(indices))):
    raise DataError(f"{where}: {what} {indices} is not a contiguous increasing span")
  return _check_span(indices[0], indices[-1] + 1, num_words, where, what)


def _parse_text_line(line: str, where: str, example_id: str) -> Example:
  """Builds an Example from one raw ASTE-V2 line (no parse)."""
  sentence, separator, annotation = line.rpartition("####")
  if not separator:
    raise DataError(f"{where}: missing the '####' separator between the sentence and its triplets")
  if not sentence:
    raise DataError(f"{where}: empty sentence")
  tokens = tuple(sentence.split(" "))
  try:
    raw_triplets = ast.literal_eval(annotation.strip())
  except (ValueError, SyntaxError) as error:
    raise DataError(f"{where}: cannot parse the triplet list {annotation.strip()[:60]!r}") from error
  if not isinstance(raw_triplets, list):
    raise DataError(f"{where}: the triplets must be a list of (aspect, opinion, sentiment) tuples")
  triplets = []
  for number, raw in enumerate(raw_triplets):
    if not isinstance(raw, tuple) or len(raw) != 3:
      raise DataError(f"{where}: triplet {number} is {raw!r}, expected (aspect, opinion, sentiment)")
    if raw[2] not in _SENTIMENT_OF_ABBREVIATION:
      raise DataError(f"{where}: triplet {number} has unknown sentiment {raw[2]!r}; expected one of "
                      f"{tuple(_SENTIMENT_OF_ABBREVIATION)}")
    aspect = _contiguous_span(raw[0], len(tokens), where, f"triplet {number} aspect")
    opinion = _contiguous_span(raw[1], len(tokens), where, f"triplet {number} opinion")
    triplets.append(Triplet(aspect, opinion, _SENTIMENT_OF_ABBREVIATION[raw[2]]))
  return Example(id=example_id, tokens=tokens, triplets=tuple(triplets))


def dataset_paths(data_dir: PathLike, dataset: str, split: str, format: str = "d2e2s") -> pathlib.Path:  # pylint: disable=redefined-builtin
  """The path of a benchmark split under `../shared/data` (or a downloaded copy)."""
  data_dir = pathlib.Path(data_dir)
  if format == "d2e2s":
    return data_dir / "aste" / dataset / f"{split}_dep_triple_polarity_result.json"
  if format == "aste_v2":
    return data_dir / "aste-v2-raw" / dataset / f"{split}_triplets.txt"
  raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS}")
