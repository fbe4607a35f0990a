r"""Trains and evaluates D2E2S.

  python -m experiments.train --flagfile=experiments/configs/14res.flags --workdir=DIR

Every setting of `d2e2s_jax.settings.Settings` is a flag of the same name, type, default
and help; a value outside a setting's rule ends the run before any work with one line,
e.g. `error: --drop_out_rate=1.5: must be in [0, 1)`, and exit status 1.
`--seeds=1,2,3` runs one training per seed under `DIR/seed_<n>/` and writes the mean and
standard deviation of the test scores at the best dev step to `DIR/seeds.json` and
`DIR/seeds.md`. Errors in the input data or the flags end the run with one line and a
non-zero exit; checkpoints and logs already written stay.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from d2e2s_jax import settings
from experiments import host_flags
from experiments import setting_flags
from experiments.setting_flags import config_from_flags

flags.adopt_module_key_flags(setting_flags)  # one flag per setting, --compilation_cache_dir
flags.adopt_module_key_flags(host_flags)  # --host_memory
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", required=True)
flags.DEFINE_list("seeds", [], "Several seeds: one run per seed and a mean/std table (overrides --seed).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: address of process 0 for jax.distributed.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")

FLAGS = flags.FLAGS


def seeds_from_flags() -> list:
  """`--seeds` as integers (each a valid `--seed`)."""
  seeds = []
  for text in FLAGS.seeds:
    try:
      seed = int(text)
    except ValueError:
      raise settings.SettingError("seeds", ",".join(FLAGS.seeds), "must be a comma-separated list of integers") from None
    settings.check_value("seed", seed)
    seeds.append(seed)
  return seeds


def main(argv):
  del argv
  try:  # every setting is checked before any work
    config = config_from_flags()
    seeds = seeds_from_flags()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if not FLAGS["verbosity"].present:
    # Orbax logs every save at INFO; keep the console to the progress bar and results.
    logging.set_verbosity(logging.WARNING)
  host_flags.apply()  # may restart the process; before any work
  if FLAGS.coordinator_address:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  setting_flags.enable_compilation_cache()
  from d2e2s_jax.data import download  # pylint: disable=g-import-not-at-top
  from d2e2s_jax.training import trainer  # pylint: disable=g-import-not-at-top  # heavy
  try:
    if seeds:
      summary = trainer.train_seeds(config, FLAGS.workdir, seeds)
      print(summary["markdown"])
    else:
      results = trainer.train_and_evaluate(config, FLAGS.workdir)
      logging.info("results: %s", results)
      best = results["test"] or results["dev"]
      print(f"best dev step {results['best_step']}: dev triplet F1 {results['dev']['triplet']['f1']:.2f}"
            + (f", test triplet F1 {best['triplet']['f1']:.2f}" if results["test"] else ""))
  except (ValueError, OSError, trainer.TrainingError, download.DownloadError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
