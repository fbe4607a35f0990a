"""Turns raw data into D2E2S JSON with dependency parses, so new data can be trained on.

  python -m experiments.convert --input=train_triplets.txt --input_format=aste_v2 \
      --output=train_dep_triple_polarity_result.json --parser=DIR_OR_NAME [--skip_invalid]

Input formats:
* "aste_v2": the raw ASTE-Data-V2 files (`words####[([aspect], [opinion], 'POS'), ...]`);
  the words are kept as they are and the triplets carried over.
* "text": one plain sentence per line (blank lines ignored), no triplets; the words are
  the parser's tokenization.

The parser is a directory written by `experiments/train_parser.py` or an installed
spaCy pipeline such as en_core_web_sm. Ids are `<input file stem>:<line>`. A bad line is
reported on stderr as one line naming the file and the 1-based line, and the command
exits with status 1 without writing anything; with --skip_invalid bad lines are skipped
and counted on stderr. The output is written beside itself and renamed into place
(`d2e2s_jax.parsing.convert_file`). Prints one JSON object:
{"input", "output", "sentences", "skipped"}.
"""

import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from d2e2s_jax import parsing
from d2e2s_jax.data.examples import DataError

_INPUT = flags.DEFINE_string("input", None, "Raw input file.", required=True)
_INPUT_FORMAT = flags.DEFINE_enum("input_format", None, list(parsing.INPUT_FORMATS), "Format of --input.",
                                  required=True)
_OUTPUT = flags.DEFINE_string("output", None, "D2E2S JSON file to write.", required=True)
_PARSER = flags.DEFINE_string("parser", None, "spaCy pipeline directory or installed pipeline name.",
                              required=True)
_SKIP_INVALID = flags.DEFINE_bool("skip_invalid", False, "Skip bad lines (counted) instead of failing.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    summary = parsing.convert_file(_INPUT.value, _INPUT_FORMAT.value, _OUTPUT.value, _PARSER.value,
                                   skip_invalid=_SKIP_INVALID.value)
  except (DataError, parsing.ParserError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  if summary["skipped"]:
    print(f"skipped {summary['skipped']} invalid line(s) of {summary['input']}", file=sys.stderr)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
