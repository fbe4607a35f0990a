r"""Predicts aspect-sentiment triplets with a trained model, as JSON lines.

  python -m experiments.predict --workdir=RUN_OR_BUNDLE --parser=PARSER_DIR \
      --text="The pizza was great but the staff was rude ."
  python -m experiments.predict --workdir=RUN_OR_BUNDLE --input=test.json --input_format=d2e2s \
      --output=predictions.jsonl

`--workdir` is a training run's directory (its `--which` checkpoint is used) or a bundle
written by `python -m experiments.export`. Each input sentence gives one line:
  {"text": ..., "tokens": [...], "triplets": [{"aspect": [start, end], "aspect_text": ...,
   "opinion": [start, end], "opinion_text": ..., "sentiment": ..., "score": ...}]}
(word spans end-exclusive; score is the sentiment's sigmoid probability), or
  {"text": ..., "error": ...}
for a sentence that cannot be predicted (empty, too long); the others go on.

`--output_format=d2e2s` writes instead one D2E2S JSON predictions file, the format of a
training run's `predictions/<split>_best.json` (every triplet with its `score`, INVALID
ones included as the evaluation counts them; every span typed target / opinion as an
entity; the sentences' ids and parses): `experiments.evaluate` and `experiments.analyze`
read it. A sentence that cannot be predicted ends the run with one line instead.

Raw text (`--text`, `--input_format=text`: one sentence per line) needs a dependency
parser: `--parser` (a spaCy pipeline directory, e.g. from `experiments.train_parser`, or
an installed pipeline name), or the one a bundle carries. D2E2S JSON input carries its
own parses. Bad input (a missing or malformed file, no parser for raw text) prints one
line `error: ...` on stderr and exits 1; `--output` is written atomically, so nothing
half-written is left behind.
"""

import json
import pathlib
import sys
from typing import Iterable, List, Sequence

from absl import app
from absl import flags
from absl import logging

from experiments import host_flags

flags.adopt_module_key_flags(host_flags)  # --host_memory
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir or an exported bundle.", required=True)
_TEXT = flags.DEFINE_multi_string("text", [], "A sentence to predict (repeatable); needs a parser.")
_INPUT = flags.DEFINE_string("input", None, "A file of sentences (see --input_format).")
_INPUT_FORMAT = flags.DEFINE_enum("input_format", "text", ["text", "d2e2s"],
                                  "text: one raw sentence per line (needs a parser); d2e2s: D2E2S JSON with "
                                  "parses.")
_OUTPUT = flags.DEFINE_string("output", None, "Output file (written atomically); default stdout.")
_OUTPUT_FORMAT = flags.DEFINE_enum("output_format", "jsonl", ["jsonl", "d2e2s"],
                                   "jsonl: one JSON line per sentence (an error record for a sentence that cannot "
                                   "be predicted); d2e2s: a D2E2S JSON predictions file as training writes "
                                   "(predictions/<split>_best.json), for experiments.evaluate / analyze; any "
                                   "sentence that cannot be predicted is then an error.")
_PARSER = flags.DEFINE_string("parser", None, "spaCy pipeline directory or installed name; default: the "
                              "bundle's parser, if any.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a training workdir.")
_CHUNK = flags.DEFINE_integer("chunk_size", 256, "Sentences read and predicted at a time.")


def _read_input() -> List:
  """The sentences to predict: --text values, then the --input file's."""
  from d2e2s_jax.data import readers  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.data.examples import DataError  # pylint: disable=import-outside-toplevel

  sentences: List = list(_TEXT.value)
  if _INPUT.value:
    path = pathlib.Path(_INPUT.value)
    if _INPUT_FORMAT.value == "d2e2s":
      sentences.extend(readers.read_examples(path, "d2e2s"))
    else:
      try:
        text = path.read_text(encoding="utf-8")
      except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({type(error).__name__}: {error})") from None
      sentences.extend(text.splitlines())
  if not sentences:
    raise app.UsageError("give sentences with --text or --input")
  return sentences


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only managers on every load
  host_flags.apply()  # may restart the process; before any work
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from d2e2s_jax import fileio  # pylint: disable=import-outside-toplevel
  from d2e2s_jax import inference  # pylint: disable=import-outside-toplevel  # heavy: jax, transformers

  errors = 0

  def write_records(stream) -> None:
    nonlocal errors
    with tqdm(total=len(sentences), unit="sentence", desc="predict", disable=not _INPUT.value,
              file=sys.stderr, dynamic_ncols=True) as progress:
      for chunk in _chunks(sentences, max(_CHUNK.value, 1)):
        for record in predictor.predict(chunk):
          errors += "error" in record
          stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        progress.update(len(chunk))

  def d2e2s_text() -> str:
    from d2e2s_jax.data import writers  # pylint: disable=import-outside-toplevel
    from d2e2s_jax.data.examples import DataError  # pylint: disable=import-outside-toplevel

    examples = []
    for chunk in _chunks(sentences, max(_CHUNK.value, 1)):
      for outcome in predictor.predict_examples(chunk):
        if isinstance(outcome, dict):
          raise DataError(f"{_INPUT.value or '--text'}: {outcome['error']} (--output_format=d2e2s needs every "
                          f"sentence predicted)")
        examples.append(outcome)
    return writers.format_examples(examples, "d2e2s", _OUTPUT.value or "stdout")

  try:
    sentences = _read_input()
    predictor = inference.Predictor.load(_WORKDIR.value, which=_WHICH.value, parser=_PARSER.value)
    if _OUTPUT_FORMAT.value == "d2e2s":
      text = d2e2s_text()  # everything predicted before anything is written
      if _OUTPUT.value:
        fileio.write_text_atomic(pathlib.Path(_OUTPUT.value), text)
      else:
        print(text)
    elif _OUTPUT.value:
      # Written beside the destination and renamed: a failed run leaves no partial file.
      def write_file(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as stream:
          write_records(stream)
      fileio.write_atomic(pathlib.Path(_OUTPUT.value), write_file)
    else:
      write_records(sys.stdout)
  except (ValueError, OSError) as error:  # DataError, InferenceError and ParserError are ValueErrors
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  if errors:
    print(f"{errors} of {len(sentences)} sentence(s) could not be predicted (see their \"error\" field)",
          file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
