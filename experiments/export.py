r"""Exports a training run's checkpoint as a self-contained inference bundle.

  python -m experiments.export --workdir=RUN --output=BUNDLE [--parser=PARSER_DIR] [--which=best]

The bundle (`d2e2s_jax.inference`'s module docstring lists its files) holds the
parameters only (no optimizer state), the run's config, the encoder config, the
tokenizer and, with `--parser`, the spaCy parser, so `python -m experiments.predict
--workdir=BUNDLE` and `Predictor.from_bundle` need neither the run nor the hub. It is
written beside `--output` and renamed into place. Errors print one line `error: ...` on
stderr and exit 1.
"""

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "The bundle directory to create.", required=True)
_PARSER = flags.DEFINE_string("parser", None, "spaCy pipeline directory or installed name to include.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to export.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --output.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only managers on every load
  from d2e2s_jax import inference  # pylint: disable=import-outside-toplevel  # heavy: jax, transformers

  try:
    path = inference.export_bundle(_WORKDIR.value, _OUTPUT.value, which=_WHICH.value, parser=_PARSER.value,
                                   overwrite=_OVERWRITE.value)
  except (ValueError, OSError) as error:  # InferenceError and ParserError are ValueErrors
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  print(path)


if __name__ == "__main__":
  app.run(main)
