"""Inference: a trained D2E2S model as a `Predictor`, and self-contained export bundles.

A `Predictor` loads once what prediction needs (the run's `TrainConfig`, tokenizer,
model and parameters, and optionally a dependency parser) and then turns sentences into
triplets:

  predictor = Predictor.from_workdir("runs/14res", parser="parsers/en")
  predictor.predict(["The pizza was great but the staff was rude ."])
  # [{"text": ..., "tokens": [...], "triplets": [{"aspect": [1, 2], "aspect_text": "pizza",
  #   "opinion": [3, 4], "opinion_text": "great", "sentiment": "POSITIVE", "score": 0.93},
  #   ...]}]

Sources of a predictor:

* `Predictor.from_workdir(workdir, which)`: a training run's directory; only the
  parameters are read from the Orbax checkpoint (`best` or `latest`), never the
  optimizer state, into a target built with `jax.eval_shape` of the trainer's own
  initialisation.
* `Predictor.from_bundle(directory)`: what `export_bundle` writes, loadable without the
  training workdir, the dataset or the hub:

    bundle.json          format version, source run, checkpoint step
    config.json          the run's TrainConfig
    encoder_config.json  the encoder's DebertaV2Config (HF config.json layout)
    tokenizer/           the tokenizer, saved by `save_pretrained`
    params/              Orbax StandardCheckpoint of the parameters only
    parser/              the spaCy pipeline (only when one was given)

  A bundle is written into a temporary directory beside the destination and renamed
  into place, so a failed export leaves nothing half-written.

Inputs to `predict` are raw strings (split into words and parsed by the parser), word
lists (parsed), or `Example`s (used as they are when they carry a parse, as the D2E2S
JSON files do). The model's graph layers need a dependency parse, so raw text and word
lists without a parser are refused with one error for the whole call. Problems of one
sentence (empty, more sub-tokens than the run's `max_length`) give a record
`{"text", "error"}` in its place and do not stop the others.

Batches have the run's evaluation batch size and static shapes: the sequence axis T is
padded to training's bucket series, and the span and edge axes to their largest possible
size for T (every span of up to `max_span_size` words over T - 2 words; T * T edges:
`batching.ShapePlan.worst_case`), not to sizes measured on the inputs as training's plan
is. So the jitted step compiles once per T bucket, whatever sentences later calls bring.

Deliberate differences from the training evaluation: triplets of the INVALID output are
dropped (evaluation keeps them, as the released code does: they can only be false
positives), and each triplet carries its score, the sigmoid probability of its sentiment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from d2e2s_jax import fileio
from d2e2s_jax import prediction
from d2e2s_jax import tokenization
from d2e2s_jax.data import batching, encoding
from d2e2s_jax.data.examples import SENTIMENT_OUTPUTS, DataError, Example
from d2e2s_jax.models import d2e2s
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config
from d2e2s_jax.training import sharding
from d2e2s_jax.training.config import TrainConfig

PathLike = Union[str, os.PathLike]
Sentence = Union[str, Sequence[str], Example]
# A parser turns raw strings or word lists into parsed Examples, one per input.
ParseFn = Callable[[Sequence[Union[str, Sequence[str]]]], List[Example]]

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
CONFIG_FILE = "config.json"
ENCODER_CONFIG_FILE = "encoder_config.json"
TOKENIZER_DIR = "tokenizer"
PARAMS_DIR = "params"
PARSER_DIR = "parser"
CHECKPOINT_CHOICES = ("best", "latest")

class InferenceError(ValueError):
  """A predictor cannot be built or used as asked. The message is one line."""


# ------------------------------------------------------------------------ parsers


def _spacy_parse_fn(nlp: Any) -> ParseFn:
  from d2e2s_jax import parsing  # pylint: disable=import-outside-toplevel  # imports spaCy

  return lambda sentences: parsing.parse_sentences(nlp, sentences)


def make_parse_fn(parser: Any) -> Optional[ParseFn]:
  """Turns what a caller gives as a parser into a `ParseFn` (None stays None).

  Args:
    parser: None; a spaCy pipeline name or directory (loaded with
      `d2e2s_jax.parsing.load_parser`); a loaded spaCy `Language` with a parser; or any
      callable mapping a list of strings / word lists to parsed Examples.
  """
  if parser is None:
    return None
  if isinstance(parser, (str, os.PathLike)):
    from d2e2s_jax import parsing  # pylint: disable=import-outside-toplevel

    return _spacy_parse_fn(parsing.load_parser(parser))
  if hasattr(parser, "vocab") and hasattr(parser, "pipe_names"):  # a spaCy Language
    return _spacy_parse_fn(parser)
  if callable(parser):
    return parser
  raise InferenceError(f"parser: expected a spaCy pipeline, its name or directory, or a callable, "
                       f"got {type(parser).__name__}")


def _save_parser(parser: Any, destination: pathlib.Path) -> None:
  """Copies a parser (directory, installed pipeline name or loaded pipeline) into a bundle."""
  if isinstance(parser, (str, os.PathLike)):
    from d2e2s_jax import parsing  # pylint: disable=import-outside-toplevel

    nlp = parsing.load_parser(parser)  # validates it before anything is copied
    if pathlib.Path(parser).is_dir():
      shutil.copytree(parser, destination)
    else:
      nlp.to_disk(destination)
  elif hasattr(parser, "to_disk"):
    parser.to_disk(destination)
  else:
    raise InferenceError(f"parser: a bundle can hold a spaCy pipeline (its name, directory or the loaded "
                         f"pipeline), not a {type(parser).__name__}")


# ---------------------------------------------------------------- checkpoint reading


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise InferenceError(f"{path}: missing") from None
  except (OSError, ValueError) as error:
    raise InferenceError(f"{path}: unreadable ({error})") from None


def _checkpoint_step(checkpoints_dir: pathlib.Path, which: str) -> int:
  """The step of the best (by dev triplet F1) or the latest complete checkpoint."""
  if which not in CHECKPOINT_CHOICES:
    raise InferenceError(f"which must be one of {CHECKPOINT_CHOICES}, got {which!r}")
  directory = checkpoints_dir / which
  if not directory.is_dir():
    raise InferenceError(f"{directory}: no {which} checkpoints here (is this a training workdir?)")
  options = ocp.CheckpointManagerOptions(
      read_only=True, best_fn=(lambda metrics: metrics["dev_triplet_f1"]) if which == "best" else None,
      best_mode="max")
  with ocp.CheckpointManager(directory, options=options, item_names=("state", "meta")) as manager:
    step = manager.best_step() if which == "best" else manager.latest_step()
  if step is None:
    raise InferenceError(f"{directory}: holds no complete checkpoint")
  return int(step)


def _tree_paths(tree: Any) -> List[str]:
  return sorted(jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree))


def _restore_params(state_dir: pathlib.Path, abstract_params: Any) -> Any:
  """Reads only `params` of a checkpointed TrainState (partial restore: no optimizer state)."""
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(state_dir).item_metadata
  stored = getattr(stored, "tree", stored)
  if "params" not in stored:
    raise InferenceError(f"{state_dir}: not a training state (no params)")
  # Partial restore silently skips what the target does not name; check both ways.
  expected, found = _tree_paths(abstract_params), _tree_paths(stored["params"])
  if expected != found:
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    raise InferenceError(f"{state_dir}: parameters do not match the model built from config.json "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
  target = {"params": abstract_params}
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  return restored["params"]


# ---------------------------------------------------------------------- predictor


def _init_batch(tokenizer: Any, config: TrainConfig) -> Dict[str, np.ndarray]:
  """A one-sentence batch with the training keys, for the trainer's initialisation."""
  example = Example(id="init", tokens=("init", "batch"), heads=(0, 1), relations=("ROOT", "dep"))
  encoded = [encoding.encode_example(example, tokenizer, max_length=config.max_length)]
  batch = next(batching.eval_batches(encoded, config.batch_config(tokenizer, training=False)))
  rows = batch["input_ids"].shape[0]
  batch["pair_indices"] = np.zeros((rows, 1, 2), np.int32)
  batch["pair_mask"] = np.zeros((rows, 1), bool)
  batch["pair_labels"] = np.zeros((rows, 1, len(SENTIMENT_OUTPUTS)), np.float32)
  return batch


def _error_record(text: str, message: str) -> Dict[str, Any]:
  return {"text": text, "error": message}


class Predictor:
  """A loaded model that predicts triplets for sentences. Build it with a `from_*` method."""

  def __init__(self, config: TrainConfig, encoder_config: DebertaV2Config, tokenizer: Any,
               params: Any = None, *, checkpoint_dir: Optional[pathlib.Path] = None, parser: Any = None,
               mesh: Optional[jax.sharding.Mesh] = None, source: str = ""):
    """Builds the model and the jitted step, and places the parameters.

    Args:
      config: the run's TrainConfig.
      encoder_config: the encoder's config.
      tokenizer: the run's tokenizer.
      params: parameters (a tree of arrays); or None with `checkpoint_dir`.
      checkpoint_dir: an Orbax TrainState directory (`.../<step>/state`) or a bundle's
        `params/` StandardCheckpoint to read the parameters from.
      parser: see `make_parse_fn`; needed for raw text and word lists.
      mesh: where to run; default one device (inference batches are small).
      source: describes where the model came from (for messages).
    """
    self.config = config
    self.encoder_config = encoder_config
    self.tokenizer = tokenizer
    self.source = source
    self._parser_spec = parser
    self._parse_fn: Optional[ParseFn] = None
    self.mesh = mesh if mesh is not None else sharding.make_mesh("", devices=jax.devices()[:1])
    self.model_config = config.model_config(encoder_config)
    self.model = d2e2s.D2E2S(self.model_config)
    self._word_encoder = encoding.WordEncoder(tokenizer)
    self.batch_config = config.batch_config(tokenizer, training=False)

    init_batch = _init_batch(tokenizer, config)
    boxed = jax.eval_shape(lambda rng: d2e2s.init_params(self.model, init_batch, rng), jax.random.key(config.seed))
    self.param_shardings = sharding.logical_shardings(boxed, self.mesh)
    abstract = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                            nn.meta.unbox(boxed), self.param_shardings)
    if params is not None:
      if _tree_paths(params) != _tree_paths(abstract):
        raise InferenceError(f"{source}: the parameters do not match the model built from the config")
      self.params = jax.tree.map(lambda value, target: jax.device_put(value, target.sharding), params, abstract)
    elif checkpoint_dir is not None and checkpoint_dir.name == "state":
      self.params = _restore_params(checkpoint_dir, abstract)
    elif checkpoint_dir is not None:
      with ocp.StandardCheckpointer() as checkpointer:
        self.params = checkpointer.restore(checkpoint_dir, abstract)
    else:
      raise InferenceError("Predictor needs params or checkpoint_dir")
    # The threshold as a runtime input, as in training: the same compiled program.
    self.predict_step = prediction.make_predict_step(self.model, self.mesh, self.param_shardings,
                                                     threshold=self.model_config.sen_filter_threshold)
    # Sentences are not known in advance: every batch of T pieces gets the largest S and E
    # that T allows, so the step compiles once per T bucket (see the module docstring).
    self._shapes = batching.ShapePlan.worst_case(config.max_span_size, config.max_length)

  # ----------------------------------------------------------------- constructors

  @classmethod
  def from_workdir(cls, workdir: PathLike, which: str = "best", parser: Any = None,
                   mesh: Optional[jax.sharding.Mesh] = None) -> "Predictor":
    """Loads a training run's checkpoint (`which`: "best" by dev F1, or "latest")."""
    checkpoints_dir = pathlib.Path(workdir) / "checkpoints"
    if not (checkpoints_dir / CONFIG_FILE).is_file():
      raise InferenceError(f"{workdir}: not a training workdir or bundle (no checkpoints/{CONFIG_FILE} "
                           f"or {BUNDLE_FILE})")
    config = _load_config(checkpoints_dir / CONFIG_FILE)
    tokenizer = _load_tokenizer(checkpoints_dir / TOKENIZER_DIR)
    step = _checkpoint_step(checkpoints_dir, which)
    return cls(config, _encoder_config(config, tokenizer, checkpoints_dir), tokenizer,
               checkpoint_dir=checkpoints_dir / which / str(step) / "state", parser=parser, mesh=mesh,
               source=f"{workdir} ({which} checkpoint, step {step})")

  @classmethod
  def from_bundle(cls, directory: PathLike, parser: Any = None,
                  mesh: Optional[jax.sharding.Mesh] = None) -> "Predictor":
    """Loads an exported bundle; `parser` overrides the bundle's own `parser/`."""
    directory = pathlib.Path(directory)
    meta = _read_json(directory / BUNDLE_FILE)
    if meta.get("format") != BUNDLE_FORMAT:
      raise InferenceError(f"{directory / BUNDLE_FILE}: bundle format {meta.get('format')!r}, expected "
                           f"{BUNDLE_FORMAT}")
    config = _load_config(directory / CONFIG_FILE)
    encoder_config = _load_encoder_config(directory / ENCODER_CONFIG_FILE)
    tokenizer = _load_tokenizer(directory / TOKENIZER_DIR)
    if parser is None and (directory / PARSER_DIR).is_dir():
      parser = str(directory / PARSER_DIR)
    return cls(config, encoder_config, tokenizer, checkpoint_dir=(directory / PARAMS_DIR).absolute(),
               parser=parser, mesh=mesh, source=str(directory))

  @classmethod
  def load(cls, path: PathLike, which: str = "best", parser: Any = None,
           mesh: Optional[jax.sharding.Mesh] = None) -> "Predictor":
    """A bundle (a directory with bundle.json) or else a training workdir."""
    if (pathlib.Path(path) / BUNDLE_FILE).is_file():
      return cls.from_bundle(path, parser=parser, mesh=mesh)
    return cls.from_workdir(path, which=which, parser=parser, mesh=mesh)

  @property
  def has_parser(self) -> bool:
    return self._parser_spec is not None

  def _parser(self) -> ParseFn:
    if self._parse_fn is None:
      if self._parser_spec is None:
        raise InferenceError(f"raw text and word lists need a dependency parser and {self.source} has none; "
                             f"pass a parser (--parser=NAME_OR_DIR) or give parsed examples (D2E2S JSON)")
      self._parse_fn = make_parse_fn(self._parser_spec)  # loaded on first use: spaCy is slow to import
    return self._parse_fn

  # ------------------------------------------------------------------- prediction

  def predict(self, sentences: Sequence[Sentence]) -> List[Dict[str, Any]]:
    """Triplets for each sentence (see the module docstring for the record layout).

    Args:
      sentences: raw strings, word lists or Examples, in any mix.

    Returns:
      One dict per sentence, in order: `{"text", "tokens", "triplets"}` (plus `"id"` for
      Examples), or `{"text", "error"}` for a sentence that cannot be predicted.

    Raises:
      InferenceError: raw text or word lists were given and there is no parser.
    """
    records = []
    for sentence, outcome in zip(sentences, self._predict(sentences)):
      if isinstance(outcome, dict):  # an error record
        records.append(outcome)
        continue
      example, predicted = outcome
      record = {"text": _text_of(sentence), "tokens": list(example.tokens),
                "triplets": _triplet_records(predicted, example.tokens)}
      if isinstance(sentence, Example):
        record["id"] = example.id
      records.append(record)
    return records

  def predict_examples(self, sentences: Sequence[Sentence]) -> List[Union[Example, Dict[str, Any]]]:
    """Each sentence's prediction as an `Example` of a D2E2S JSON predictions file.

    The records training writes (`prediction.as_example`: every triplet with its score,
    INVALID ones included as the evaluation counts them, and the typed term spans as
    `entities`), with the sentence's id and parse; `{"text", "error"}` in place of a
    sentence that cannot be predicted. Raises as `predict`.
    """
    return [outcome if isinstance(outcome, dict) else prediction.as_example(*outcome)
            for outcome in self._predict(sentences)]

  def _predict(self, sentences: Sequence[Sentence]) -> List[Union[Tuple[Example, prediction.SentencePrediction],
                                                                  Dict[str, Any]]]:
    """Per sentence, (its parsed example, its prediction) or an error record."""
    records: List[Optional[Dict[str, Any]]] = [None] * len(sentences)
    examples: List[Optional[Example]] = [None] * len(sentences)
    to_parse: List[int] = []
    for index, sentence in enumerate(sentences):
      if isinstance(sentence, Example):
        if not sentence.tokens:
          records[index] = _error_record("", f"sentence {index} ({sentence.id}): empty sentence")
        elif sentence.has_parse:
          examples[index] = sentence
        else:
          to_parse.append(index)
      elif isinstance(sentence, str):
        if sentence.strip():
          to_parse.append(index)
        else:
          records[index] = _error_record(sentence, f"sentence {index}: empty sentence")
      elif all(isinstance(word, str) for word in sentence):
        if any(word.strip() for word in sentence):
          to_parse.append(index)
        else:
          records[index] = _error_record(" ".join(sentence), f"sentence {index}: empty sentence")
      else:
        records[index] = _error_record(str(sentence), f"sentence {index}: expected a string, a list of "
                                       f"strings or an Example, got {type(sentence).__name__}")
    if to_parse:
      parse = self._parser()
      for index in to_parse:  # one at a time, so one bad sentence costs only its own record
        sentence = sentences[index]
        words = sentence.tokens if isinstance(sentence, Example) else sentence
        try:
          (parsed,) = parse([list(words) if not isinstance(words, str) else words])
        except DataError as error:
          records[index] = _error_record(_text_of(sentence), f"sentence {index}: {error}")
          continue
        if isinstance(sentence, Example):
          parsed = dataclasses.replace(parsed, id=sentence.id, triplets=sentence.triplets)
        examples[index] = parsed

    encoded: List[encoding.EncodedExample] = []
    positions: List[int] = []
    for index, example in enumerate(examples):
      if example is None:
        continue
      pieces = 2 + sum(len(self._word_encoder(word)) for word in example.tokens)  # [CLS] words [SEP]
      if pieces > self.config.max_length:
        records[index] = _error_record(_text_of(sentences[index]), (
            f"sentence {index}: {pieces} sub-tokens exceed the model's max_length {self.config.max_length}; "
            f"split the sentence"))
        continue
      encoded.append(encoding.encode_example(example, self._word_encoder, max_length=self.config.max_length,
                                             index=len(encoded)))
      positions.append(index)
    outcomes: List[Any] = list(records)
    if encoded:  # the one prediction path
      planned = batching.plan_dataset(encoded, self.batch_config, train=False).with_shapes(self._shapes)
      predicted = prediction.predict(self.predict_step, self.params, encoded, self.batch_config, self.mesh, planned)
      for position, sentence_prediction in zip(positions, predicted):
        outcomes[position] = (examples[position], sentence_prediction)
    return outcomes

  def save_bundle(self, output_dir: PathLike, *, parser: Any = None, overwrite: bool = False,
                  provenance: Optional[Dict[str, Any]] = None) -> pathlib.Path:
    """Writes this predictor as a bundle (see the module docstring), atomically.

    Args:
      output_dir: the bundle directory; it must not exist unless `overwrite`.
      parser: a spaCy pipeline (name, directory or loaded) to copy into `parser/`;
        default the predictor's own parser when it is a name or directory.
      overwrite: replace an existing bundle (only once the new one is complete).
      provenance: extra fields for `bundle.json`.
    """
    output_dir = pathlib.Path(output_dir).absolute()
    if output_dir.exists() and not overwrite:
      raise InferenceError(f"{output_dir}: already exists; choose another --output or remove it")
    if output_dir.exists() and not (output_dir / BUNDLE_FILE).is_file():
      raise InferenceError(f"{output_dir}: exists and is not a bundle; not overwriting it")
    if parser is None and isinstance(self._parser_spec, (str, os.PathLike)):
      parser = self._parser_spec
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
      (staging / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2, sort_keys=True) + "\n")
      (staging / ENCODER_CONFIG_FILE).write_text(json.dumps(self.encoder_config.to_hf_dict(), indent=2) + "\n")
      self.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging / PARAMS_DIR, self.params)
        checkpointer.wait_until_finished()
      if parser is not None:
        _save_parser(parser, staging / PARSER_DIR)
      meta = {"format": BUNDLE_FORMAT, "source": self.source, "parser": parser is not None, **(provenance or {})}
      (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
      fileio.replace_directory(staging, output_dir)
    finally:
      if staging.exists():
        shutil.rmtree(staging)
    return output_dir


def _text_of(sentence: Sentence) -> str:
  if isinstance(sentence, str):
    return sentence
  if isinstance(sentence, Example):
    return " ".join(sentence.tokens)
  return " ".join(str(word) for word in sentence)


def _triplet_records(predicted: prediction.SentencePrediction, tokens: Sequence[str]) -> List[Dict[str, Any]]:
  """The triplet dicts of one sentence (INVALID dropped), ordered by aspect, opinion, sentiment."""
  records = []
  for triplet, score in predicted.scored_triplets(keep_invalid=False):
    aspect, opinion = list(triplet.aspect), list(triplet.opinion)
    records.append({"aspect": aspect, "aspect_text": " ".join(tokens[aspect[0]:aspect[1]]),
                    "opinion": opinion, "opinion_text": " ".join(tokens[opinion[0]:opinion[1]]),
                    "sentiment": triplet.sentiment, "score": score})
  records.sort(key=lambda t: (t["aspect"], t["opinion"], t["sentiment"]))
  return records


# -------------------------------------------------------------- config loading


def _load_config(path: pathlib.Path) -> TrainConfig:
  try:
    return TrainConfig.from_json(_read_json(path))
  except (TypeError, ValueError) as error:
    raise InferenceError(f"{path}: not a TrainConfig ({error})") from None


def _load_tokenizer(directory: pathlib.Path) -> Any:
  if not directory.is_dir():
    raise InferenceError(f"{directory}: missing (the run's tokenizer)")
  return tokenization.load_tokenizer(directory)


def _load_encoder_config(path: pathlib.Path) -> DebertaV2Config:
  try:
    return DebertaV2Config.from_hf(path)
  except (OSError, TypeError, ValueError) as error:
    raise InferenceError(f"{path}: not an encoder config ({error})") from None


def _encoder_config(config: TrainConfig, tokenizer: Any, checkpoints_dir: pathlib.Path) -> DebertaV2Config:
  """The encoder config of a run, as the trainer builds it (`TrainConfig.encoder_config`):
  derived (scratch), saved beside the checkpoints, or (older runs) the hub's config.json."""
  saved = checkpoints_dir / ENCODER_CONFIG_FILE
  try:
    return config.encoder_config(tokenizer, saved if saved.is_file() else None)
  except (OSError, TypeError, ValueError) as error:
    raise InferenceError(f"{saved if saved.is_file() else config.encoder}: not an encoder config ({error})") from None


def export_bundle(workdir: PathLike, output_dir: PathLike, which: str = "best", parser: Any = None,
                  overwrite: bool = False) -> pathlib.Path:
  """Exports a training run's checkpoint as a self-contained bundle (see the module docstring).

  Args:
    workdir: the training run's directory.
    output_dir: the bundle directory to create.
    which: "best" (by dev triplet F1) or "latest".
    parser: a spaCy pipeline name, directory or loaded pipeline to include as `parser/`.
    overwrite: replace an existing bundle at `output_dir`.

  Returns:
    The bundle's path.
  """
  predictor = Predictor.from_workdir(workdir, which=which)
  step = _checkpoint_step(pathlib.Path(workdir) / "checkpoints", which)
  return predictor.save_bundle(output_dir, parser=parser, overwrite=overwrite,
                               provenance={"workdir": str(pathlib.Path(workdir).absolute()), "checkpoint": which,
                                           "step": step})
