"""An offline dependency parser: train a spaCy tagger + parser on the D2E2S gold parses.

The D2E2S JSON files carry a dependency parse (Universal Dependencies relations, Penn
Treebank tags) per sentence, but raw ASTE data and new sentences have none, and the
pretrained spaCy pipelines cannot be downloaded everywhere. This module trains a small
spaCy pipeline (`tok2vec` -> `tagger` + `parser`, blank English, no vectors) from
scratch on the gold parses with spaCy's own training loop, evaluates it against gold
parses, loads a trained directory or an installed spaCy pipeline, and parses sentences
into `Example`s in the D2E2S layout.

* `examples_to_docs`: gold parses (over the parse's own words, `parse_words`) -> spaCy
  `Doc`s. A parse cut into segments (a second ROOT entry) becomes one `Doc` with one
  sentence per segment. Examples without a parse, or whose parse words spaCy cannot
  hold (an empty word), are skipped and counted by reason.
* `training_sentences`: drops repeated sentences and those of held-out splits (the
  benchmark datasets share sentences across splits).
* `train_parser`: config from `spacy.cli.init_config` (the "efficiency" CNN tok2vec,
  with weight averaging turned on), `DocBin` corpora in a temporary directory,
  `spacy.training.loop.train`; the checkpoint with the best dev score (spaCy's default
  weighting of tag accuracy, UAS and LAS, as spaCy scores them: punctuation excluded)
  is saved with an atomic directory rename. Corpora are read with `gold_preproc`, i.e.
  on the gold words, because the parser is used on pre-tokenized words.
* `evaluate_parser`: UAS / LAS / tag accuracy in percent on the gold words (the parser
  gets the gold tokenization), punctuation included.
* `load_parser`, `parse_sentences`, `read_text_sentences`, `convert_file`: parsing new
  sentences and converting raw files (`experiments/convert.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pathlib
import shutil
import tempfile
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Union

from d2e2s_jax import fileio
from d2e2s_jax.data import parses
from d2e2s_jax.data.examples import DataError, Example

PathLike = Union[str, pathlib.Path]
ROOT_LABEL = "ROOT"  # spaCy's label for a sentence root; the D2E2S files use it too
_TRAINING_SUBDIR = "spacy-training"


class ParserError(ValueError):
  """A parser cannot be loaded or saved. The message names the pipeline or directory."""


@dataclasses.dataclass(frozen=True)
class GoldDocs:
  """Gold parses as spaCy `Doc`s.

  Attributes:
    docs: one `Doc` per converted example, with heads, dependency labels and (when the
      example has them) tags; a segmented parse gives one sentence per segment.
    example_indices: for each doc, the index of its example in the input.
    skipped: reason -> number of examples that could not be converted.
  """

  docs: List[Any]
  example_indices: List[int]
  skipped: Dict[str, int]


def examples_to_docs(examples: Sequence[Example], vocab: Any) -> GoldDocs:
  """Converts the examples' gold parses (over their `parse_words`) to spaCy `Doc`s.

  Args:
    examples: examples, typically read from D2E2S JSON (validated parses).
    vocab: the `spacy.vocab.Vocab` the docs belong to.

  Returns:
    The docs, the index of each doc's example, and the skip counts ("no parse" for
    examples without one, "empty word" for parse words spaCy refuses).
  """
  from spacy.tokens import Doc  # pylint: disable=import-outside-toplevel  # slow import, only needed here

  docs, indices = [], []
  skipped: Dict[str, int] = collections.Counter()
  for index, example in enumerate(examples):
    if example.dependency is None:
      skipped["no parse"] += 1
      continue
    words = list(example.parse_words if example.parse_words is not None else example.tokens)
    if not all(words):
      skipped["empty word"] += 1
      continue
    heads = [0] * len(words)
    deps = [""] * len(words)
    # Sentence-wide numbering turns the segments into disjoint contiguous trees, which
    # spaCy reads back as one sentence per segment.
    for relation, head, dependent in parses.global_dependency(example.dependency):
      heads[dependent - 1] = dependent - 1 if head == 0 else head - 1
      deps[dependent - 1] = ROOT_LABEL if head == 0 else relation
    tags = None
    if example.pos_tags is not None and len(example.pos_tags) == len(words):
      tags = list(example.pos_tags)
    docs.append(Doc(vocab, words=words, heads=heads, deps=deps, tags=tags))
    indices.append(index)
  return GoldDocs(docs=docs, example_indices=indices, skipped=dict(skipped))


def training_sentences(train_examples: Sequence[Example],
                       held_out: Sequence[Example] = ()) -> Tuple[List[Example], Dict[str, int]]:
  """Removes repeated sentences and sentences of the held-out splits from a training set.

  The benchmark datasets share sentences (most of 15res's dev split is in 14res's and
  16res's train splits), so a parser trained on the union of the train splits would be
  scored on sentences it was trained on. Sentences are compared by their parse words.

  Returns:
    The kept examples in input order, and counts {"duplicate": .., "held_out": ..}.
  """
  held_out_words = {_parse_words(example) for example in held_out}
  seen = set()
  kept = []
  removed = {"duplicate": 0, "held_out": 0}
  for example in train_examples:
    words = _parse_words(example)
    if words in held_out_words:
      removed["held_out"] += 1
    elif words in seen:
      removed["duplicate"] += 1
    else:
      seen.add(words)
      kept.append(example)
  return kept, removed


def _parse_words(example: Example) -> Tuple[str, ...]:
  return tuple(example.parse_words if example.parse_words is not None else example.tokens)


@dataclasses.dataclass(frozen=True)
class TrainedParser:
  """The result of `train_parser`.

  Attributes:
    nlp: the saved pipeline, loaded back from `path`.
    path: where it was saved.
    train_docs, dev_docs: number of gold docs trained / selected on.
    skipped: reason -> examples of either set that could not be converted.
  """

  nlp: Any
  path: pathlib.Path
  train_docs: int
  dev_docs: int
  skipped: Dict[str, int]


def parser_config(*, seed: int, max_steps: int, max_epochs: int = 0, eval_frequency: int = 200,
                  patience: int = 1600, width: int = 96, depth: int = 4, dropout: float = 0.1,
                  use_averages: bool = True) -> Any:
  """The spaCy training config of a blank English tok2vec + tagger + parser.

  spaCy's own "efficiency" template (what `spacy init config` writes) with the size,
  schedule and weight averaging overridden; `[paths] train/dev` are filled in by `train_parser`.
  """
  from spacy.cli.init_config import init_config  # pylint: disable=import-outside-toplevel

  config = init_config(lang="en", pipeline=["tagger", "parser"], optimize="efficiency", gpu=False, silent=True)
  config["system"]["seed"] = seed
  training = config["training"]
  training["max_steps"] = max_steps
  training["max_epochs"] = max_epochs
  training["eval_frequency"] = eval_frequency
  training["patience"] = patience
  training["dropout"] = dropout
  training["logger"]["progress_bar"] = False
  # Evaluate and save the running average of the weights (the template turns it off).
  training["optimizer"]["use_averages"] = use_averages
  config["components"]["tok2vec"]["model"]["encode"]["width"] = width
  config["components"]["tok2vec"]["model"]["encode"]["depth"] = depth
  for split in ("train", "dev"):
    # Train and select on the gold words: the parser is run on pre-tokenized words.
    config["corpora"][split]["gold_preproc"] = True
  return config


def train_parser(train_examples: Sequence[Example], dev_examples: Sequence[Example], output_dir: PathLike, *,
                 seed: int = 0, max_steps: int = 2500, max_epochs: int = 0, eval_frequency: int = 200,
                 patience: int = 1600, width: int = 96, depth: int = 4, dropout: float = 0.1,
                 use_averages: bool = True, log: Optional[IO[str]] = None) -> TrainedParser:
  """Trains a tagger and a dependency parser from scratch on gold parses and saves it.

  Deterministic given the seed (spaCy seeds Python's, numpy's and thinc's generators;
  training runs on the CPU).

  Args:
    train_examples: examples with gold parses to train on.
    dev_examples: examples with gold parses for checkpoint selection.
    output_dir: where the pipeline is saved (`spacy.load`able). It must not exist, be
      empty, or hold a spaCy pipeline (which is replaced); the new pipeline is written
      beside it and renamed into place, so a failed run leaves the old one intact.
    seed: random seed.
    max_steps: optimizer steps (0 = until `max_epochs` or early stopping).
    max_epochs: passes over the training data (0 = unlimited).
    eval_frequency: steps between dev evaluations (checkpoint selection).
    patience: steps without dev improvement before stopping (0 = never stop early).
    width, depth: the CNN tok2vec's width and number of layers.
    dropout: dropout rate.
    use_averages: evaluate and save the running average of the weights.
    log: stream for spaCy's training table (default: discarded).

  Returns:
    The loaded pipeline, its path and the document counts.

  Raises:
    ParserError: `output_dir` holds something other than a spaCy pipeline.
    DataError: no training or no dev example has a usable parse.
  """
  import spacy  # pylint: disable=import-outside-toplevel
  from spacy.tokens import DocBin  # pylint: disable=import-outside-toplevel
  from spacy.training.initialize import init_nlp  # pylint: disable=import-outside-toplevel
  from spacy.training.loop import DIR_MODEL_BEST  # pylint: disable=import-outside-toplevel
  from spacy.training.loop import train as spacy_train  # pylint: disable=import-outside-toplevel

  output_dir = pathlib.Path(output_dir)
  _check_replaceable(output_dir)  # before minutes of training, not after
  vocab = spacy.blank("en").vocab
  train_gold = examples_to_docs(train_examples, vocab)
  dev_gold = examples_to_docs(dev_examples, vocab)
  if not train_gold.docs:
    raise DataError(f"train_parser: none of the {len(train_examples)} training examples has a usable parse "
                    f"(skipped: {train_gold.skipped})")
  if not dev_gold.docs:
    raise DataError(f"train_parser: none of the {len(dev_examples)} dev examples has a usable parse "
                    f"(skipped: {dev_gold.skipped})")
  skipped = collections.Counter(train_gold.skipped)
  skipped.update(dev_gold.skipped)
  output_dir.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=f".{output_dir.name}.", dir=output_dir.parent) as work_dir:
    work = pathlib.Path(work_dir)
    DocBin(docs=train_gold.docs, store_user_data=False).to_disk(work / "train.spacy")
    DocBin(docs=dev_gold.docs, store_user_data=False).to_disk(work / "dev.spacy")
    config = parser_config(seed=seed, max_steps=max_steps, max_epochs=max_epochs, eval_frequency=eval_frequency,
                           patience=patience, width=width, depth=depth, dropout=dropout,
                           use_averages=use_averages)
    config["paths"]["train"] = str(work / "train.spacy")
    config["paths"]["dev"] = str(work / "dev.spacy")
    nlp = init_nlp(config)
    stream = log if log is not None else io.StringIO()
    (work / _TRAINING_SUBDIR).mkdir()  # spaCy creates model-last/ but not its parent
    spacy_train(nlp, work / _TRAINING_SUBDIR, stdout=stream, stderr=stream)
    # spaCy returns model-last; model-best, the checkpoint with the best dev score, exists
    # from the evaluation at step 0 on.
    best_path = work / _TRAINING_SUBDIR / DIR_MODEL_BEST
    staging = work / "pipeline"
    shutil.copytree(best_path, staging)
    _check_replaceable(output_dir)
    fileio.replace_directory(staging, output_dir)
  return TrainedParser(nlp=spacy.load(output_dir), path=output_dir, train_docs=len(train_gold.docs),
                       dev_docs=len(dev_gold.docs), skipped=dict(skipped))


def _check_replaceable(output_dir: pathlib.Path) -> None:
  """Raises ParserError unless `output_dir` is absent, empty or a spaCy pipeline."""
  if not output_dir.exists():
    return
  if not output_dir.is_dir():
    raise ParserError(f"{output_dir}: exists and is not a directory; not overwriting it")
  if any(output_dir.iterdir()) and not (output_dir / "config.cfg").is_file():
    raise ParserError(f"{output_dir}: exists and is not a spaCy pipeline directory (no config.cfg); "
                      f"not overwriting it")


def evaluate_parser(nlp: Any, examples: Sequence[Example]) -> Dict[str, Any]:
  """Scores a pipeline against the examples' gold parses on the gold words.

  The pipeline gets each sentence pre-tokenized as the gold parse's words (so no
  alignment is involved). Every word counts, punctuation included; a root is correct
  when both parses make the word a root. LAS compares labels verbatim (root = "ROOT").

  Returns:
    {"uas", "las", "tag_acc"} in percent (tag_acc over the words with a gold tag, None
    when there are none), "words", "sentences" (scored examples) and "skipped" (reason
    -> count, see `examples_to_docs`).
  """
  from spacy.tokens import Doc  # pylint: disable=import-outside-toplevel

  gold = examples_to_docs(examples, nlp.vocab)
  inputs = [Doc(nlp.vocab, words=[token.text for token in doc]) for doc in gold.docs]
  words = heads_correct = labels_correct = tagged = tags_correct = 0
  for gold_doc, predicted in zip(gold.docs, nlp.pipe(inputs, batch_size=256)):
    for gold_token, token in zip(gold_doc, predicted):
      words += 1
      if gold_token.head.i == token.head.i:
        heads_correct += 1
        labels_correct += gold_token.dep_ == token.dep_
      if gold_token.tag_:
        tagged += 1
        tags_correct += gold_token.tag_ == token.tag_
  percent = lambda count, total: 100.0 * count / total if total else None  # pylint: disable=unnecessary-lambda-assignment
  return {"uas": percent(heads_correct, words), "las": percent(labels_correct, words),
          "tag_acc": percent(tags_correct, tagged), "words": words, "sentences": len(gold.docs),
          "skipped": gold.skipped}


def load_parser(name_or_path: PathLike) -> Any:
  """Loads a spaCy pipeline with a dependency parser: a directory or an installed package.

  Args:
    name_or_path: a directory saved by `train_parser` (or any `nlp.to_disk`), or the
      name of an installed spaCy pipeline package such as "en_core_web_sm".

  Raises:
    ParserError: neither exists, the pipeline cannot be loaded, or it has no parser.
  """
  import spacy  # pylint: disable=import-outside-toplevel
  from spacy.pipeline import DependencyParser  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(name_or_path)
  if path.is_dir():
    if not (path / "config.cfg").is_file():
      raise ParserError(f"{path}: not a spaCy pipeline directory (no config.cfg); train one with "
                        f"`python -m experiments.train_parser --output={path}`")
    source = path
  elif spacy.util.is_package(str(name_or_path)):
    source = str(name_or_path)
  else:
    raise ParserError(f"parser {str(name_or_path)!r}: no such directory and no installed spaCy pipeline of that "
                      f"name; train one with `python -m experiments.train_parser --output=DIR` "
                      f"(d2e2s_jax.parsing.train_parser) or install a spaCy model such as en_core_web_sm")
  try:
    nlp = spacy.load(source)
  except (OSError, ValueError, KeyError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ParserError(f"parser {str(name_or_path)!r}: cannot be loaded: {first_line}") from error
  if not any(isinstance(pipe, DependencyParser) for _, pipe in nlp.pipeline):
    raise ParserError(f"parser {str(name_or_path)!r}: the pipeline {nlp.pipe_names} has no dependency parser")
  return nlp


def parse_sentences(nlp: Any, sentences: Sequence[Union[str, Sequence[str]]],
                    ids: Optional[Sequence[str]] = None) -> List[Example]:
  """Parses sentences into examples (no triplets) with the parse in the D2E2S layout.

  Args:
    nlp: a pipeline with a parser (`load_parser`).
    sentences: per sentence either raw text (split into words by the pipeline's
      tokenizer; whitespace is dropped) or a list of words (kept as they are).
    ids: example ids; default "sentence:<index>".

  Returns:
    One `Example` per sentence, parsed by `parses.parse_with_spacy`.

  Raises:
    DataError: an empty sentence (naming its index and id), or `ids` of another length.
  """
  if ids is not None and len(ids) != len(sentences):
    raise DataError(f"parse_sentences: {len(ids)} ids for {len(sentences)} sentences")
  examples = []
  for index, sentence in enumerate(sentences):
    example_id = ids[index] if ids is not None else f"sentence:{index}"
    if isinstance(sentence, str):
      words = tuple(token.text for token in nlp.tokenizer(sentence) if not token.is_space)
    else:
      words = tuple(sentence)
      if not all(isinstance(word, str) for word in words):
        raise DataError(f"sentence {index} ({example_id}): expected a string or a list of strings")
    if not words:
      raise DataError(f"sentence {index} ({example_id}): empty sentence")
    examples.append(Example(id=example_id, tokens=words))
  return parses.parse_with_spacy(examples, nlp)


def read_text_sentences(path: PathLike, *, skip_invalid: bool = False
                        ) -> Tuple[List[str], List[int], List[DataError]]:
  """Reads plain sentences, one per line (blank lines are ignored).

  A line holding the ASTE-V2 separator "####" is rejected: the file is most likely an
  annotated file read with the wrong format, and its triplets would become words.

  Args:
    path: a UTF-8 text file.
    skip_invalid: skip bad lines (returned as errors) instead of raising.

  Returns:
    (sentences, their 1-based line numbers, errors of the skipped lines).

  Raises:
    DataError: the file cannot be read or decoded, or (unless skip_invalid) a bad line,
      naming the file and the line.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_bytes().decode("utf-8")
  except OSError as error:
    raise DataError(f"{path}: cannot read the file ({error.strerror})") from error
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not valid UTF-8 at byte {error.start}") from error
  sentences, numbers, errors = [], [], []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    if "####" in line:
      error = DataError(f"{path}, line {number}: holds the aste_v2 separator '####' "
                        f"(use --input_format=aste_v2 for annotated files)")
      if not skip_invalid:
        raise error
      errors.append(error)
      continue
    sentences.append(line.strip())
    numbers.append(number)
  return sentences, numbers, errors


INPUT_FORMATS = ("aste_v2", "text")


def convert_file(input_path: PathLike, input_format: str, output_path: PathLike, parser: Any, *,
                 skip_invalid: bool = False) -> Dict[str, Any]:
  """Turns a raw file into D2E2S JSON with dependency parses (`experiments/convert.py`).

  Args:
    input_path: an ASTE-V2 file ("aste_v2": words kept, triplets carried over) or plain
      sentences, one per line ("text": split into words by the parser's tokenizer, no
      triplets). Ids are `<file stem>:<line>`.
    input_format: "aste_v2" or "text".
    output_path: the JSON file; written beside itself and renamed into place, so an
      existing file is replaced whole or not at all (and kept on any error).
    parser: a loaded spaCy pipeline, or a name or directory for `load_parser` (loaded
      only after the input was read, so a bad file fails fast).
    skip_invalid: skip bad lines (counted) instead of raising.

  Returns:
    {"input", "output", "sentences" (written), "skipped" (bad lines)}.

  Raises:
    DataError: a bad line (naming the file and the 1-based line) unless skip_invalid.
    ParserError: the parser cannot be loaded.
  """
  from d2e2s_jax.data import readers, writers  # pylint: disable=import-outside-toplevel

  if input_format not in INPUT_FORMATS:
    raise ValueError(f"unknown input format {input_format!r}; expected one of {INPUT_FORMATS}")
  if input_format == "aste_v2":
    examples, errors = readers.read_examples_with_errors(input_path, "aste_v2", skip_invalid=skip_invalid)
  else:
    sentences, line_numbers, errors = read_text_sentences(input_path, skip_invalid=skip_invalid)
  nlp = parser if hasattr(parser, "pipe_names") else load_parser(parser)
  if input_format == "aste_v2":
    parsed = parses.parse_with_spacy(examples, nlp)  # keeps the words, ids and triplets
  else:
    stem = pathlib.Path(input_path).stem
    parsed = parse_sentences(nlp, sentences, ids=[f"{stem}:{number}" for number in line_numbers])
  output_path = pathlib.Path(output_path)
  fileio.write_atomic(output_path, lambda temporary: writers.write_examples(parsed, temporary, "d2e2s"))
  return {"input": str(input_path), "output": str(output_path), "sentences": len(parsed), "skipped": len(errors)}
