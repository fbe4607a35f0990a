r"""Hyperparameter search: an Optuna study whose trials are training runs.

  python -m experiments.sweep --flagfile=experiments/configs/14res.flags \
      --search_space=experiments/configs/sweeps/guide.json --study_dir=runs/14res_sweep --n_trials=40

Every training flag (`experiments/train.py`'s, one per setting) may be given and sets that
setting for all trials; the search space file (format in `d2e2s_jax/tuning.py`) gives the
searched ones. A setting named on the command line itself (not in a flagfile) is fixed
even where the space searches it. The space is checked against the settings' rules before
any trial; a bad file, flag or combination prints one line, `error: <file>: <entry>: ...`,
and exits 1.

The objective is the dev triplet F1 at each run's best dev step, the mean over
`--seeds_per_trial` seeds. `--storage=postgresql://user@host/db` lets several machines run
workers of one study: the same command on each (the study ends at `--n_trials` in all).
A worker killed mid-trial leaves it to be retried, resumed from its checkpoints, by the
next worker to start a trial once `--grace_period` has passed. The outputs in
`--study_dir`: `sweep.md`, `best.flags` (runs with `experiments.train` as is), plots, the
study (`study.db` unless `--storage`) and `trials/<n>/seed_<s>/` training workdirs.
"""

import json
import sys
from typing import Iterable, Set

from absl import app
from absl import flags
from absl import logging

from d2e2s_jax import settings
from experiments import host_flags
from experiments import setting_flags

flags.adopt_module_key_flags(setting_flags)  # one flag per setting, --compilation_cache_dir
flags.adopt_module_key_flags(host_flags)  # --host_memory
_SPACE = flags.DEFINE_string("search_space", None, "Search space JSON file (e.g. experiments/configs/sweeps/guide.json).")
_STUDY_DIR = flags.DEFINE_string("study_dir", None, "Directory of the sweep's outputs, trial workdirs and (without "
                                 "--storage) its SQLite study.")
_N_TRIALS = flags.DEFINE_integer("n_trials", None, "The study's total number of trials, over all workers (default "
                                 "with --sampler=grid: the grid's size).")
_SEEDS = flags.DEFINE_integer("seeds_per_trial", 1, "Runs per trial, seeds --seed, --seed+1, ...; the objective is "
                              "their mean dev F1 (only the first seed's evaluations feed the pruner).")
_SAMPLER = flags.DEFINE_enum("sampler", "tpe", ["tpe", "random", "grid"], "Optuna sampler: tpe (multivariate TPE), "
                             "random, or grid (the categorical choices and each range's listed \"grid\" values).")
_SAMPLER_SEED = flags.DEFINE_integer("sampler_seed", None, "Sampler seed (unset: drawn; give each worker its own).")
_PRUNER = flags.DEFINE_string("pruner", "median", "Optuna pruner: none, median, percentile, successive_halving, "
                              "hyperband or threshold.")
_PRUNER_OPTIONS = flags.DEFINE_string("pruner_options", "{}", "The pruner's keyword arguments as JSON, e.g. "
                                      "'{\"n_startup_trials\": 2}' or, for threshold, '{\"lower\": 20}'.")
_STORAGE = flags.DEFINE_string("storage", None, "Optuna RDB storage URL shared by the workers (postgresql://..., "
                               "mysql+pymysql://...); default sqlite:///<study_dir>/study.db.")
_STUDY_NAME = flags.DEFINE_string("study_name", None, "The study's name in the storage (default: the study_dir's "
                                  "name).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_interval", 60, "Seconds between a running trial's heartbeats.")
_GRACE = flags.DEFINE_integer("grace_period", None, "Seconds without a heartbeat after which a trial counts as lost "
                              "and is retried (default: twice --heartbeat_interval).")
_MAX_RETRY = flags.DEFINE_integer("max_retry", 3, "How often a lost trial is retried.")
_KEEP = flags.DEFINE_enum("keep_checkpoints", "best", ["best", "all", "none"], "What a finished run keeps of its "
                          "checkpoints: best (its best-dev one), all (also the resume ones), none (logs, results and "
                          "predictions only).")
_ENQUEUE = flags.DEFINE_bool("enqueue", True, "Run the search space's named trials (\"enqueue\") first.")

FLAGS = flags.FLAGS


def command_line_settings(argv: Iterable[str]) -> Set[str]:
  """The settings named by the command line's own flags (those of a --flagfile not included)."""
  names = set()
  for token in argv:
    if token == "--":
      break
    if not token.startswith("-"):
      continue
    name = token.lstrip("-").split("=", 1)[0]
    if name in settings.FIELDS:
      names.add(name)
    elif name.startswith("no") and settings.TYPES.get(name[2:]) is bool:
      names.add(name[2:])
  return names


def _sweep_config(tuning):
  for flag, value in (("search_space", _SPACE.value), ("study_dir", _STUDY_DIR.value)):
    if not value:
      raise settings.SettingError(flag, value, "is required")
  try:
    pruner_options = json.loads(_PRUNER_OPTIONS.value)
  except json.JSONDecodeError as e:
    raise settings.SettingError("pruner_options", _PRUNER_OPTIONS.value, f"not valid JSON: {e.msg}") from None
  if not isinstance(pruner_options, dict):
    raise settings.SettingError("pruner_options", _PRUNER_OPTIONS.value, "must be a JSON object")
  config = tuning.SweepConfig(
      study_dir=_STUDY_DIR.value, n_trials=_N_TRIALS.value, seeds_per_trial=_SEEDS.value, sampler=_SAMPLER.value,
      sampler_seed=_SAMPLER_SEED.value, pruner=_PRUNER.value, pruner_options=pruner_options,
      storage=_STORAGE.value, study_name=_STUDY_NAME.value, heartbeat_interval=_HEARTBEAT.value,
      grace_period=_GRACE.value, max_retry=_MAX_RETRY.value, keep_checkpoints=_KEEP.value,
      enqueue=_ENQUEUE.value)
  tuning.make_pruner(config.pruner, config.pruner_options)  # bad options end it here
  return config


def _fail(error: BaseException) -> None:
  print("error: " + " ".join(str(error).split()), file=sys.stderr)
  sys.exit(1)


def main(argv):
  del argv
  from d2e2s_jax import tuning  # pylint: disable=g-import-not-at-top  # heavy (the trainer)
  try:  # the flags, the space and its combinations with the flags, before any work
    base = setting_flags.config_from_flags()
    config = _sweep_config(tuning)
    space = tuning.load_search_space(_SPACE.value)
    fixed = sorted(command_line_settings(sys.argv[1:]) & set(space.names))
    for name in fixed:
      print(f"note: --{name}={getattr(base, name)} on the command line fixes it; not searched", file=sys.stderr)
    space = space.without(fixed)
    if not space.dimensions:
      raise tuning.SpaceError(space.path, "parameters", "the command line fixes every one; nothing to search")
    tuning.check_with_settings(space, base)
    if config.sampler == "grid":
      space.grid()
  except ValueError as e:
    _fail(e)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  host_flags.apply()  # may restart the process; before any work
  setting_flags.enable_compilation_cache()
  import optuna  # pylint: disable=g-import-not-at-top
  import sqlalchemy.exc  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
  try:
    study = tuning.run_sweep(base, space, config, log=lambda line: print(line, flush=True))
  except (ValueError, OSError, ImportError, tuning.SweepError, optuna.exceptions.OptunaError,
          sqlalchemy.exc.SQLAlchemyError) as e:  # ImportError: no driver for --storage's database
    _fail(e)
  report = config.study_dir / "sweep.md"
  try:
    best = study.best_trial
  except ValueError:
    print(f"no trial completed; see {report}")
    return
  test = tuning.test_summary(config.study_dir, best)
  mean, std = tuning.dev_summary(best)
  print(f"best trial {best.number}: dev triplet F1 {mean:.2f} ± {std:.2f}"
        + (f", test triplet F1 {test['mean']:.2f} ± {test['std']:.2f} (not used to select)" if test else "")
        + f"; {report}, {config.study_dir / 'best.flags'}")


if __name__ == "__main__":
  app.run(main)
