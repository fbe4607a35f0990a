"""Scores a predictions file against a gold file, both in the D2E2S JSON format.

  python -m experiments.evaluate --gold=test.json --predictions=predicted_test.json
  python -m experiments.evaluate --gold=test.json --predictions=released.json --align=order

The predictions are read with `readers.read_predictions` (ours or the released code's
files: a sentiment may pair any two entities, INVALID triplets count as false positives,
aspect and opinion terms are the entities typed target and opinion); the gold file with
`readers.read_examples` (strict).

Prints one JSON object to stdout:
  {"triplet": {"precision": .., "recall": .., "f1": .., "gold": .., "predicted": ..,
   "correct": ..}, "aspect": {...}, "opinion": {...}}
with precision, recall and F1 in percent. Bad input prints one line naming the file and
the record to stderr and exits with status 1.
"""

import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from d2e2s_jax import evaluation
from d2e2s_jax.data.examples import DataError
from d2e2s_jax.data.readers import read_examples, read_predictions

_GOLD = flags.DEFINE_string("gold", None, "Gold examples, D2E2S JSON.", required=True)
_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Predicted examples, D2E2S JSON as `readers.read_predictions` reads it (ours or the released "
    "code's: sentiments may pair any two entities, INVALID allowed, optional scores).", required=True)
_ALIGN = flags.DEFINE_enum("align", "id", evaluation.ALIGNMENTS, evaluation.ALIGNMENT_HELP)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    gold = read_examples(_GOLD.value, format="d2e2s")
    predicted = read_predictions(_PREDICTIONS.value)
    scores = evaluation.score(gold, predicted, gold_source=_GOLD.value, predicted_source=_PREDICTIONS.value,
                              align=_ALIGN.value)
  except DataError as error:
    # The reader reports a missing or unreadable file as a DataError naming it, too.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(evaluation.scores_as_dict(scores), indent=2))


if __name__ == "__main__":
  app.run(main)
