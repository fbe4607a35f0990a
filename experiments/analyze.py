"""Writes an error-analysis report of one or more predictions files against a gold file.

  python -m experiments.analyze --gold=test.json --predictions=a.json \
      [--predictions=b.json ...] --output=report.html [--align=order]

Gold is D2E2S JSON read strictly (`readers.read_examples`), each predictions file D2E2S
JSON read as predictions (`readers.read_predictions`), aligned with the gold by id (or,
with --align=order, by position: the released code's prediction files carry no ids). The
report (`d2e2s_jax.analysis`: scores, error categories, buckets, every sentence marked,
the differences between files) is one self-contained HTML page, written atomically; the
same summary is printed as Markdown on stdout. Bad input or an unwritable --output prints
one line `error: ...` on stderr, writes nothing and exits with status 1.
"""

import sys
from typing import Sequence

from absl import app
from absl import flags

from d2e2s_jax import analysis
from d2e2s_jax import evaluation
from d2e2s_jax import fileio
from d2e2s_jax.data.examples import DataError
from d2e2s_jax.data.readers import read_examples, read_predictions

_GOLD = flags.DEFINE_string("gold", None, "Gold examples, D2E2S JSON.", required=True)
_PREDICTIONS = flags.DEFINE_multi_string("predictions", None,
                                         "Predicted examples, D2E2S JSON; repeat to compare files (A, B, ...).",
                                         required=True)
_OUTPUT = flags.DEFINE_string("output", None, "The HTML report to write.", required=True)
_ALIGN = flags.DEFINE_enum("align", "id", evaluation.ALIGNMENTS, evaluation.ALIGNMENT_HELP)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    gold = read_examples(_GOLD.value, format="d2e2s")
    predictions = [(path, read_predictions(path)) for path in _PREDICTIONS.value]
    result = analysis.analyze(gold, predictions, gold_source=_GOLD.value, align=_ALIGN.value)
  except DataError as error:
    # The readers report a missing or unreadable file as a DataError naming it, too.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  try:
    fileio.write_text_atomic(_OUTPUT.value, analysis.render_html(result))
  except OSError as error:
    print(f"error: --output={_OUTPUT.value}: cannot write the report ({error.strerror or error})", file=sys.stderr)
    sys.exit(1)
  sys.stdout.write(analysis.render_markdown(result))


if __name__ == "__main__":
  app.run(main)
