"""Trains the offline dependency parser (spaCy tagger + parser) on the benchmark parses.

  python -m experiments.train_parser --data_dir=../shared/data --output=DIR \
      [--datasets=14lap,14res,15res,16res] [--max_steps=2500] [--seed=0]

Trains on the union of the datasets' train splits (D2E2S JSON gold parses) with every
sentence that also occurs in a dev or test split of those datasets removed (the
datasets share sentences; without this most of 15res's dev split would be training
data), selects the checkpoint on the union of the dev splits, and scores each dev and
test split on its gold words, punctuation included. Prints one JSON object:
  {"dev": {"14lap": {"uas": .., "las": .., "tag_acc": .., "words": ..}, ...},
   "test": {...}, "train_sentences": .., "removed": {...}, "seed": .., ...}
and writes it to DIR/metrics.json. spaCy's training table goes to stderr. Bad input
prints one line naming the file and the record to stderr and exits with status 1.
"""

import json
import pathlib
import sys
import time
from typing import Sequence

from absl import app
from absl import flags

from d2e2s_jax import fileio
from d2e2s_jax import parsing
from d2e2s_jax.data.examples import DataError
from d2e2s_jax.data.readers import dataset_paths, read_examples

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Data root holding aste/<dataset>/.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to save the spaCy pipeline to.", required=True)
_DATASETS = flags.DEFINE_list("datasets", ["14lap", "14res", "15res", "16res"], "Datasets to train on.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 2500, "Optimizer steps.")
_EVAL_FREQUENCY = flags.DEFINE_integer("eval_frequency", 250, "Steps between dev evaluations.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    metrics = run(_DATA_DIR.value, _OUTPUT.value, _DATASETS.value, max_steps=_MAX_STEPS.value,
                  eval_frequency=_EVAL_FREQUENCY.value, seed=_SEED.value)
  except (DataError, parsing.ParserError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(metrics, indent=2))


def run(data_dir: str, output: str, datasets: Sequence[str], *, max_steps: int, eval_frequency: int,
        seed: int) -> dict:
  """Reads the splits, trains, evaluates and writes metrics.json; returns the metrics."""
  if not datasets:
    raise DataError("--datasets is empty")
  splits = {split: {dataset: read_examples(dataset_paths(data_dir, dataset, split)) for dataset in datasets}
            for split in ("train", "dev", "test")}
  held_out = [example for split in ("dev", "test") for examples in splits[split].values() for example in examples]
  train, removed = parsing.training_sentences(
      [example for examples in splits["train"].values() for example in examples], held_out)
  dev = [example for examples in splits["dev"].values() for example in examples]
  start = time.time()
  trained = parsing.train_parser(train, dev, output, seed=seed, max_steps=max_steps,
                                 eval_frequency=eval_frequency, log=sys.stderr)
  train_seconds = time.time() - start
  metrics = {
      split: {dataset: parsing.evaluate_parser(trained.nlp, examples) for dataset, examples in splits[split].items()}
      for split in ("dev", "test")
  }
  metrics.update({"datasets": list(datasets), "train_sentences": trained.train_docs, "removed": removed,
                  "skipped": trained.skipped, "max_steps": max_steps, "seed": seed,
                  "train_seconds": round(train_seconds, 1),
                  "note": "percent over every word, punctuation included, on the gold words"})
  fileio.write_json_atomic(pathlib.Path(output) / "metrics.json", metrics)
  return metrics


if __name__ == "__main__":
  app.run(main)
