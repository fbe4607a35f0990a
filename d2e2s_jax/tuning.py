"""Hyperparameter search over the training settings, on Optuna.

A sweep is an Optuna study whose trials are training runs. This module holds its pieces;
`experiments/sweep.py` is the command line over them.

* **Search space** (`load_search_space`): a JSON file naming `Settings` fields, each with
  a distribution, and optionally named trials to run first:

      {"parameters": {
         "lr": {"distribution": "log_uniform", "low": 1e-6, "high": 3e-4, "grid": [5e-6, 5e-5]},
         "drop_out_rate": {"distribution": "uniform", "low": 0.1, "high": 0.5},
         "max_span_size": {"distribution": "int", "low": 4, "high": 10, "step": 2},
         "batch_size": {"distribution": "categorical", "choices": [8, 16]}},
       "enqueue": {"old": {"lr": 5e-6}, "current": {"lr": 5e-5}}}

  `log_uniform` and `uniform` are for float settings, `int` (optional `step`) for integer
  ones, `categorical` for any. A range may list `grid` values (for `sampler="grid"`).
  Before any trial, every name and every value a trial can reach is checked with the
  settings' own rules (`settings.check_value`: the bounds of a float range, every value
  of an int range, every choice and grid value, every enqueued value) and every rule
  between settings (`settings.check_combinations`) over the space's reachable values
  combined with the fixed settings; a bad file raises `SpaceError`, one line naming the
  file and the entry.
* **Objective** (`Objective`): dev triplet F1 at each run's best dev step, the mean over
  the trial's seeds (`base.seed`, `base.seed + 1`, ...); the per-seed values are the
  trial's user attributes `dev_f1` and `best_step`. Test scores never enter the study:
  the report reads the best trial's test scores from its runs' `results.json` (computed
  at each run's best dev step) and prints them beside it.
* **Pruning**: every evaluation of the trial's *first* seed reports its dev F1 at its step
  (`trial.report`) through the trainer's `on_evaluation` callback; when the pruner says
  so the callback stops the run cleanly (checkpoint, logs, `results.json` with
  `stopped_at_step`) and the objective raises `optuna.TrialPruned`. Later seeds report
  nothing (a step can be reported once per trial) and always run to the end, so a
  trial's intermediate values are its first seed's learning curve.
* **Failures**: an objective that raises leaves the trial FAIL (never a number) with the
  one-line error as its user attribute `error`; the sweep goes on with the next trial.
* **Storage and workers**: an Optuna RDB study (SQLite `study_dir/study.db` by default,
  or a PostgreSQL/MySQL URL that several machines share: each runs the same command).
  Trials beat a heartbeat; a trial whose worker died (kill -9, preemption) becomes FAIL
  once its heartbeat is older than the grace period and is retried
  (`RetryHeartbeatStaleTrialCallback`, intermediate values inherited) by the next worker
  that starts a trial, in the workdir of the original trial number, so its runs resume
  from their newest checkpoints and its finished seeds are not run again.
* **Trial count**: `n_trials` is the study's total. Each original trial (not a retry)
  takes one slot, whatever its state; a worker starts a trial while a slot is free or a
  trial waits in the queue (an enqueued or retried one), and stops otherwise. (Optuna's
  `MaxTrialsCallback` counts states, which would count a stale trial and its retry
  twice.) Two workers that check in the same instant while one slot is left can both
  start one, and the study ends one trial over; no trial ever runs twice.
* **Outputs** (`write_report`): `sweep.md`, `best.flags`, the plots, and one workdir per
  trial `trials/<original number>/seed_<n>/` (a training workdir each).

The study is a plain Optuna study: `optuna-dashboard sqlite:///.../study.db` opens it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import pathlib
import shutil
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import optuna
import sqlalchemy.exc

from d2e2s_jax import fileio
from d2e2s_jax import settings
from d2e2s_jax.training import checkpoints, trainer
from d2e2s_jax.training.config import TrainConfig

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS: Dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
}
KEEP_CHECKPOINTS = ("all", "best", "none")
TRIALS_DIR = "trials"
# Values checked one by one for an int range up to this many; beyond it, its bounds.
_MAX_ENUMERATED = 10_000
_ENTRY_KEYS = {"log_uniform": {"low", "high", "grid"}, "uniform": {"low", "high", "grid"},
               "int": {"low", "high", "step", "grid"}, "categorical": {"choices"}}


class SpaceError(ValueError):
  """A search space file is invalid; the message is one line naming the file and the entry."""

  def __init__(self, path: Any, entry: str, problem: str):
    super().__init__(f"{path}: {entry}: {problem}")


class SweepError(RuntimeError):
  """The sweep cannot start (e.g. the study was created with another search space)."""


@contextlib.contextmanager
def _quiet_experimental():
  """Optuna marks heartbeats, retries and its matplotlib plots experimental; we use them knowingly."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    yield


@contextlib.contextmanager
def _quiet_optuna():
  """Optuna's own log below errors and every Python warning off (plots of sparse studies warn)."""
  verbosity = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield
  finally:
    optuna.logging.set_verbosity(verbosity)


# ------------------------------------------------------------------ the search space


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One searched setting and its distribution."""

  name: str
  distribution: str  # one of DISTRIBUTIONS
  low: Any = None
  high: Any = None
  step: Optional[int] = None
  choices: Optional[Tuple[Any, ...]] = None
  grid: Optional[Tuple[Any, ...]] = None

  def suggest(self, trial: optuna.Trial) -> Any:
    if self.distribution == "log_uniform":
      return trial.suggest_float(self.name, self.low, self.high, log=True)
    if self.distribution == "uniform":
      return trial.suggest_float(self.name, self.low, self.high)
    if self.distribution == "int":
      return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1)
    return trial.suggest_categorical(self.name, list(self.choices))

  def contains(self, value: Any) -> bool:
    """Whether a trial can take `value` here."""
    if self.distribution == "categorical":
      return any(_same(value, choice) for choice in self.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.distribution == "int":
      return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % (self.step or 1) == 0
    return self.low <= value <= self.high

  def reachable(self) -> List[Any]:
    """The values checked against the settings' rules: all of them where that is finite."""
    if self.distribution == "categorical":
      return list(self.choices)
    if self.distribution == "int":
      values = range(self.low, self.high + 1, self.step or 1)
      return list(values) if len(values) <= _MAX_ENUMERATED else [self.low, self.high]
    return [self.low, self.high]

  def grid_values(self) -> Optional[List[Any]]:
    return list(self.choices) if self.distribution == "categorical" else (list(self.grid) if self.grid else None)

  def to_json(self) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"distribution": self.distribution}
    for key in ("low", "high", "step"):
      if getattr(self, key) is not None:
        entry[key] = getattr(self, key)
    for key in ("choices", "grid"):
      if getattr(self, key) is not None:
        entry[key] = list(getattr(self, key))
    return entry

  def describe(self) -> str:
    if self.distribution == "categorical":
      return "one of " + ", ".join(_show(c) for c in self.choices)
    kind = {"log_uniform": "log-uniform", "uniform": "uniform", "int": "integers"}[self.distribution]
    step = f" step {self.step}" if self.step and self.step != 1 else ""
    return f"{kind} [{_show(self.low)}, {_show(self.high)}]{step}"


def _same(a: Any, b: Any) -> bool:
  return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                           and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _show(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "null" if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The searched settings (in file order) and the named trials to run first."""

  path: str
  dimensions: Tuple[Dimension, ...]
  enqueue: Tuple[Tuple[str, Dict[str, Any]], ...] = ()

  @property
  def names(self) -> List[str]:
    return [d.name for d in self.dimensions]

  def suggest(self, trial: optuna.Trial) -> Dict[str, Any]:
    """The trial's value of every dimension (sampled, or fixed by an enqueued or retried trial)."""
    return {d.name: d.suggest(trial) for d in self.dimensions}

  def without(self, names: Iterable[str]) -> "SearchSpace":
    """The space without `names` (settings that the command line fixes); empty enqueued trials go."""
    names = set(names)
    enqueue = tuple((label, {k: v for k, v in params.items() if k not in names}) for label, params in self.enqueue)
    return SearchSpace(self.path, tuple(d for d in self.dimensions if d.name not in names),
                       tuple((label, params) for label, params in enqueue if params))

  def grid(self) -> Dict[str, List[Any]]:
    """The grid of `sampler="grid"`: each categorical's choices and each range's listed values."""
    grid = {}
    for dimension in self.dimensions:
      values = dimension.grid_values()
      if not values:
        raise SpaceError(self.path, f"parameters.{dimension.name}",
                         f"--sampler=grid needs listed values: add \"grid\": [...] to this {dimension.distribution} "
                         "range, or make it categorical")
      grid[dimension.name] = values
    return grid

  def to_json(self) -> Dict[str, Any]:
    return {"parameters": {d.name: d.to_json() for d in self.dimensions},
            "enqueue": {label: params for label, params in self.enqueue}}


def _number(path: Any, entry: str, key: str, value: Any, integer: bool) -> Any:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
    raise SpaceError(path, entry, f"{key} must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}")
  if not math.isfinite(value):
    raise SpaceError(path, entry, f"{key} must be finite")
  return value


def _check_setting(path: Any, entry: str, name: str, value: Any) -> None:
  try:
    settings.check_value(name, value)
  except settings.SettingError as e:
    raise SpaceError(path, entry, str(e)) from None


def _parse_dimension(path: Any, name: str, raw: Any) -> Dimension:
  entry = f"parameters.{name}"
  if name not in settings.FIELDS:
    raise SpaceError(path, entry, "no such setting (see d2e2s_jax/settings.py)")
  if name == "seed":
    raise SpaceError(path, entry, "the sweep sets the seeds (--seed, --seeds_per_trial); not searchable")
  if not isinstance(raw, dict):
    raise SpaceError(path, entry, "must be an object with a \"distribution\"")
  kind = raw.get("distribution")
  if kind not in DISTRIBUTIONS:
    raise SpaceError(path, entry, f"\"distribution\" must be one of {', '.join(DISTRIBUTIONS)}, "
                     f"got {json.dumps(kind)}")
  unknown = sorted(set(raw) - {"distribution"} - _ENTRY_KEYS[kind])
  if unknown:
    raise SpaceError(path, entry, f"unknown key {unknown[0]!r} for a {kind} distribution "
                     f"(keys: {', '.join(sorted(_ENTRY_KEYS[kind]))})")
  hint = settings.TYPES[name]
  if kind == "categorical":
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
      raise SpaceError(path, entry, "\"choices\" must be a non-empty list")
    for choice in choices:
      if isinstance(choice, (list, dict)):
        raise SpaceError(path, entry, f"choice {json.dumps(choice)}: choices must be numbers, strings, booleans "
                         "or null")
      _check_setting(path, entry, name, choice)
    if len({json.dumps(c) for c in choices}) != len(choices):
      raise SpaceError(path, entry, "\"choices\" lists a value twice")
    return Dimension(name, kind, choices=tuple(choices))

  integer = kind == "int"
  if integer and hint is not int:
    raise SpaceError(path, entry, f"an int distribution needs an integer setting; --{name} is "
                     f"{getattr(hint, '__name__', hint)} (use uniform, log_uniform or categorical)")
  if not integer and hint is not float:
    raise SpaceError(path, entry, f"a {kind} distribution needs a float setting; --{name} is "
                     f"{getattr(hint, '__name__', hint)} (use {'int or ' if hint is int else ''}categorical)")
  for key in ("low", "high"):
    if key not in raw:
      raise SpaceError(path, entry, f"\"{key}\" is missing")
  low = _number(path, entry, "low", raw["low"], integer)
  high = _number(path, entry, "high", raw["high"], integer)
  if not low < high:
    raise SpaceError(path, entry, f"low ({low:g}) must be below high ({high:g})")
  if kind == "log_uniform" and low <= 0:
    raise SpaceError(path, entry, f"a log_uniform range needs low > 0, got {low:g}")
  step = None
  if "step" in raw:
    step = _number(path, entry, "step", raw["step"], True)
    if step < 1:
      raise SpaceError(path, entry, f"step must be >= 1, got {step}")
    if (high - low) % step:
      raise SpaceError(path, entry, f"high - low ({high - low}) must be a multiple of step ({step})")
  grid = raw.get("grid")
  dimension = Dimension(name, kind, low=low, high=high, step=step)
  if grid is not None:
    if not isinstance(grid, list) or not grid:
      raise SpaceError(path, entry, "\"grid\" must be a non-empty list of values in the range")
    for value in grid:
      if not dimension.contains(value):
        raise SpaceError(path, entry, f"grid value {json.dumps(value)} is not in {dimension.describe()}")
    if len(set(grid)) != len(grid):
      raise SpaceError(path, entry, "\"grid\" lists a value twice")
    dimension = dataclasses.replace(dimension, grid=tuple(grid))
  for value in dimension.reachable() + list(dimension.grid or ()):
    _check_setting(path, entry, name, value)
  return dimension


def parse_search_space(raw: Any, path: Any = "<search space>") -> SearchSpace:
  """A `SearchSpace` from the JSON value of a search space file (checked on its own)."""
  if not isinstance(raw, dict):
    raise SpaceError(path, "(top level)", "must be a JSON object with \"parameters\"")
  unknown = sorted(set(raw) - {"description", "parameters", "enqueue"})
  if unknown:
    raise SpaceError(path, unknown[0], "unknown key (keys: description, parameters, enqueue)")
  parameters = raw.get("parameters")
  if not isinstance(parameters, dict) or not parameters:
    raise SpaceError(path, "parameters", "must be a non-empty object of setting name -> distribution")
  dimensions = tuple(_parse_dimension(path, name, entry) for name, entry in parameters.items())
  by_name = {d.name: d for d in dimensions}
  enqueue_raw = raw.get("enqueue", {})
  if not isinstance(enqueue_raw, dict):
    raise SpaceError(path, "enqueue", "must be an object of trial name -> {setting: value}")
  enqueue = []
  for label, params in enqueue_raw.items():
    if not isinstance(params, dict) or not params:
      raise SpaceError(path, f"enqueue.{label}", "must be a non-empty object of setting -> value")
    for name, value in params.items():
      entry = f"enqueue.{label}.{name}"
      if name not in by_name:
        raise SpaceError(path, entry, "not a parameter of this space")
      _check_setting(path, entry, name, value)
      if not by_name[name].contains(value):
        raise SpaceError(path, entry, f"{json.dumps(value)} is not in {by_name[name].describe()}")
    enqueue.append((str(label), dict(params)))
  return SearchSpace(str(path), dimensions, tuple(enqueue))


def load_search_space(path: os.PathLike) -> SearchSpace:
  """Reads and checks a search space file (see the module docstring for the format)."""
  try:
    text = pathlib.Path(path).read_text(encoding="utf-8")
  except OSError as e:
    raise SpaceError(path, "(file)", f"cannot read it: {e.strerror or e}") from None
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as e:
    raise SpaceError(path, f"line {e.lineno}", f"not valid JSON: {e.msg}") from None
  return parse_search_space(raw, path)


def check_with_settings(space: SearchSpace, base: settings.Settings) -> None:
  """Checks every rule between settings over the space's reachable values and `base`'s others.

  Raises:
    SpaceError: naming the entry (and the values of the space that break the rule).
  """
  fixed = dataclasses.asdict(base)
  by_name = {d.name: d for d in space.dimensions}
  for names, _, _ in settings.COMBINATIONS:
    searched = [name for name in names if name in by_name]
    if not searched:
      continue
    for values in itertools.product(*(by_name[name].reachable() for name in searched)):
      combination = dict(zip(searched, values))
      try:
        settings.check_combinations({**fixed, **combination})
      except settings.SettingError as e:
        shown = ", ".join(f"{k}={_show(v)}" for k, v in combination.items())
        raise SpaceError(space.path, f"parameters.{searched[-1]}", f"with {shown}: {e}") from None
  for label, params in space.enqueue:
    try:
      settings.check_combinations({**fixed, **params})
    except settings.SettingError as e:
      raise SpaceError(space.path, f"enqueue.{label}", str(e)) from None


# -------------------------------------------------------------------------- the sweep


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """How to run a sweep (everything but the settings and the space).

  Attributes:
    study_dir: outputs, trial workdirs and (by default) the SQLite study.
    n_trials: the study's total number of trials; None: the grid's size (grid sampler only).
    seeds_per_trial: runs per trial, seeds `base.seed`, `base.seed + 1`, ...
    sampler: `tpe` (Optuna's multivariate TPE), `random` or `grid`.
    sampler_seed: the sampler's seed; None draws one (give each worker its own or none).
    pruner: a key of `PRUNERS`; `pruner_options` are its keyword arguments.
    storage: an RDB URL (postgresql://..., mysql+pymysql://...); None: study_dir/study.db.
    study_name: the study's name in the storage; None: the study_dir's name.
    heartbeat_interval, grace_period: seconds between a running trial's heartbeats, and
      since the last one before the trial counts as lost (None: Optuna's, twice the interval).
    max_retry: how often a lost trial is retried.
    keep_checkpoints: what a finished run keeps of its checkpoints: `all`; `best` (the
      best-dev one; the resume checkpoints `checkpoints/latest` go); `none` (its logs,
      results and best-step predictions only; `best.flags` trains it again).
    enqueue: run the space's named trials first (not with the grid sampler).
  """

  study_dir: pathlib.Path
  n_trials: Optional[int] = None
  seeds_per_trial: int = 1
  sampler: str = "tpe"
  sampler_seed: Optional[int] = None
  pruner: str = "median"
  pruner_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  storage: Optional[str] = None
  study_name: Optional[str] = None
  heartbeat_interval: int = 60
  grace_period: Optional[int] = None
  max_retry: int = 3
  keep_checkpoints: str = "best"
  enqueue: bool = True

  def __post_init__(self):
    object.__setattr__(self, "study_dir", pathlib.Path(self.study_dir))
    checks = (
        ("n_trials", self.n_trials, self.n_trials is None or self.n_trials >= 1, "must be >= 1"),
        ("seeds_per_trial", self.seeds_per_trial, self.seeds_per_trial >= 1, "must be >= 1"),
        ("sampler", self.sampler, self.sampler in SAMPLERS, "must be one of " + ", ".join(SAMPLERS)),
        ("pruner", self.pruner, self.pruner in PRUNERS, "must be one of " + ", ".join(PRUNERS)),
        ("heartbeat_interval", self.heartbeat_interval, self.heartbeat_interval >= 1, "must be >= 1"),
        ("grace_period", self.grace_period,
         self.grace_period is None or self.grace_period > self.heartbeat_interval,
         f"must be above --heartbeat_interval={self.heartbeat_interval}"),
        ("max_retry", self.max_retry, self.max_retry >= 0, "must be >= 0"),
        ("keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints in KEEP_CHECKPOINTS,
         "must be one of " + ", ".join(KEEP_CHECKPOINTS)),
        ("n_trials", self.n_trials, self.n_trials is not None or self.sampler == "grid",
         "is required (the study's total number of trials) unless --sampler=grid"),
    )
    for name, value, holds, rule in checks:
      if not holds:
        raise settings.SettingError(name, value, rule)

  @property
  def storage_url(self) -> str:
    return self.storage or f"sqlite:///{(self.study_dir / 'study.db').absolute()}"

  @property
  def name(self) -> str:
    return self.study_name or self.study_dir.absolute().name

  def seeds(self, base: settings.Settings) -> List[int]:
    return [base.seed + i for i in range(self.seeds_per_trial)]


def make_pruner(name: str, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
  try:
    return PRUNERS[name](**options)
  except (TypeError, ValueError) as e:
    raise settings.SettingError("pruner_options", json.dumps(dict(options)),
                                f"not valid for --pruner={name}: {e}") from None


def make_sampler(config: SweepConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
  if config.sampler == "grid":
    return optuna.samplers.GridSampler(space.grid(), seed=config.sampler_seed)
  if config.sampler == "random":
    return optuna.samplers.RandomSampler(seed=config.sampler_seed)
  return optuna.samplers.TPESampler(seed=config.sampler_seed)


def make_storage(config: SweepConfig) -> optuna.storages.RDBStorage:
  """The study's RDB storage with heartbeats and the retry of lost trials."""
  url = config.storage_url
  if url.startswith("sqlite"):
    config.study_dir.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}}  # local workers share the file
  else:
    engine_kwargs = {"pool_pre_ping": True}
  with _quiet_experimental():
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry,
                                                             inherit_intermediate_values=True)
    for attempt in itertools.count():
      try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                          heartbeat_interval=config.heartbeat_interval,
                                          grace_period=config.grace_period, heartbeat_stale_trial_callback=retry)
      except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
        # Workers that start together on an empty database race to create Optuna's
        # tables; the loser finds them made once it tries again.
        if attempt == 4:
          raise
        time.sleep(1.0 + attempt)


def original_number(trial: Any) -> int:
  """The number of the trial that `trial` (frozen or live) retries, following the chain, or its own."""
  if isinstance(trial, optuna.Trial):  # a live trial carries no system attributes
    trial = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
  with _quiet_experimental():
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
  return trial.number if retried is None else retried


def _lost_and_retried(trials: Sequence[optuna.trial.FrozenTrial]) -> Dict[int, int]:
  """{number of a trial lost by its worker: number of its retry}."""
  retries = {}
  for trial in trials:
    with _quiet_experimental():
      history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)
    if history:
      retries[history[-1]] = trial.number
  return retries


def may_start_trial(study: optuna.Study, n_trials: int) -> bool:
  """Whether a worker should start another trial: one waits in the queue, or a slot is free."""
  trials = study.get_trials(deepcopy=False)
  if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
    return True
  originals = sum(1 for t in trials if original_number(t) == t.number)
  if originals >= n_trials:
    return False
  sampler = study.sampler
  return not (isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study))


def trial_dir(study_dir: os.PathLike, number: int) -> pathlib.Path:
  return pathlib.Path(study_dir) / TRIALS_DIR / str(number)


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Objective:
  """Trains a trial's runs and returns their mean best dev triplet F1 (see the module docstring)."""

  def __init__(self, base: TrainConfig, space: SearchSpace, config: SweepConfig):
    self.base, self.space, self.config = base, space, config
    self.seeds = config.seeds(base)

  def __call__(self, trial: optuna.Trial) -> float:
    number = original_number(trial)
    workdir = trial_dir(self.config.study_dir, number)
    trial.set_user_attr("workdir", str(pathlib.Path(TRIALS_DIR) / str(number)))
    try:
      params = self.space.suggest(trial)
      config = self.base.replace(**params)
      self._claim(workdir, number, params)
      dev_f1: Dict[str, float] = {}
      best_step: Dict[str, int] = {}
      for index, seed in enumerate(self.seeds):
        results = self._run(trial, config.replace(seed=seed), workdir / f"seed_{seed}", report=index == 0)
        stopped = results.get("stopped_at_step")
        if stopped is not None and stopped < results["total_steps"]:
          trial.set_user_attr("pruned_at_step", stopped)
          raise optuna.TrialPruned(f"pruned at step {stopped} (seed {seed})")
        dev_f1[str(seed)] = float(results["dev"]["triplet"]["f1"])
        best_step[str(seed)] = int(results["best_step"])
        trial.set_user_attr("dev_f1", dev_f1)
        trial.set_user_attr("best_step", best_step)
      return float(np.mean(list(dev_f1.values())))
    except optuna.TrialPruned:
      raise
    except Exception as e:
      trial.set_user_attr("error", _one_line(e))
      raise

  def _claim(self, workdir: pathlib.Path, number: int, params: Mapping[str, Any]) -> None:
    """Marks `workdir` as this trial's; a workdir of another study's trial is an error."""
    marker = workdir / "trial.json"
    record = {"study": self.config.name, "trial": number, "params": dict(params)}
    if marker.exists():
      found = json.loads(marker.read_text())
      if found != json.loads(json.dumps(record)):
        raise SweepError(f"{marker}: belongs to another trial or study ({json.dumps(found, sort_keys=True)}); "
                         "use a new --study_dir")
    fileio.write_json_atomic(marker, record)

  def _run(self, trial: optuna.Trial, config: TrainConfig, workdir: pathlib.Path, report: bool) -> Dict[str, Any]:
    """One seed's run: its finished `results.json`, or training (resumed where it stopped)."""
    results_path = workdir / "results.json"
    if results_path.exists():
      results = json.loads(results_path.read_text())
      if results.get("stopped_at_step") is None:
        return results  # finished before this trial's worker was lost
    if workdir.exists():
      ckpts = checkpoints.Checkpoints(workdir)
      step = ckpts.latest_step()
      ckpts.close()
      if step:
        resumed = dict(trial.user_attrs.get("resumed_from_step", {}))
        resumed[str(config.seed)] = int(step)
        trial.set_user_attr("resumed_from_step", resumed)

    def on_evaluation(step: int, scores: Mapping[str, Any]) -> bool:
      trial.report(float(scores["dev"]["triplet"]["f1"]), step)
      return trial.should_prune()

    results = trainer.train_and_evaluate(config, workdir, on_evaluation=on_evaluation if report else None)
    # Compilation time over the trial's seeds: what sharing one compiled step between
    # trials (runtime hyperparameters + the persistent cache) saves shows here.
    compiled = results.get("compilation", {})
    trial.set_user_attr("compile_s", round(trial.user_attrs.get("compile_s", 0.0) + compiled.get("seconds", 0.0), 1))
    trial.set_user_attr("cache_misses", trial.user_attrs.get("cache_misses", 0)
                        + compiled.get("persistent_cache_misses", 0))
    if self.config.keep_checkpoints != "all" and results.get("stopped_at_step") is None:
      # A finished run's checkpoints (checkpoints.py's layout), as keep_checkpoints says.
      for kind in ("latest",) if self.config.keep_checkpoints == "best" else ("latest", "best"):
        shutil.rmtree(workdir / "checkpoints" / kind, ignore_errors=True)
    return results


def open_study(base: TrainConfig, space: SearchSpace, config: SweepConfig) -> optuna.Study:
  """Creates the study or joins it; a new study records its space and enqueues its named trials.

  Raises:
    SweepError: the stored study was created with another search space or seed count.
  """
  storage = make_storage(config)
  study = optuna.create_study(storage=storage, study_name=config.name, direction="maximize",
                              sampler=make_sampler(config, space),
                              pruner=make_pruner(config.pruner, config.pruner_options), load_if_exists=True)
  recorded = {"search_space": space.to_json(), "seeds_per_trial": config.seeds_per_trial,
              "sampler": config.sampler}
  if "search_space" not in study.user_attrs:
    for key, value in {**recorded, "settings": base.to_json()}.items():
      study.set_user_attr(key, value)
    if config.enqueue and config.sampler != "grid":
      for label, params in space.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued_as": label}, skip_if_exists=True)
  else:
    for key, value in recorded.items():
      if study.user_attrs.get(key) != json.loads(json.dumps(value)):
        raise SweepError(f"study {config.name!r} in {_safe_url(config.storage_url)} was created with another "
                         f"{key.replace('_', ' ')}; run its workers with the same command, or use a new "
                         "--study_name/--study_dir")
  return study


def _safe_url(url: str) -> str:
  """The storage URL without a password."""
  head, sep, tail = url.partition("://")
  if sep and "@" in tail:
    credentials, _, host = tail.rpartition("@")
    return f"{head}://{credentials.partition(':')[0]}@{host}"
  return url


def run_sweep(base: TrainConfig, space: SearchSpace, config: SweepConfig,
              log: Callable[[str], None] = print) -> optuna.Study:
  """Runs trials of the study until it has `n_trials`, then writes the report.

  Several workers (processes, machines) may run this with the same arguments against one
  storage. Checks the space against `base` first, so a bad combination ends it before
  any trial.
  """
  check_with_settings(space, base)
  if config.sampler == "grid":
    space.grid()  # every range must list its values
  study = open_study(base, space, config)
  n_trials = config.n_trials or math.prod(len(v) for v in space.grid().values())
  with _quiet_experimental():
    optuna.storages.fail_stale_trials(study)  # a lost trial is retried before new ones
  objective = Objective(base, space, config)

  def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    log(progress_line(study, trial, n_trials))
    if not may_start_trial(study, n_trials):
      study.stop()

  if may_start_trial(study, n_trials):
    study.optimize(objective, callbacks=[after_trial], catch=(Exception,), gc_after_trial=True)
  write_report(study, base, space, config, n_trials)
  return study


# ---------------------------------------------------------------------------- outputs


def _duration(trial: optuna.trial.FrozenTrial) -> str:
  if trial.duration is None:
    return ""
  seconds = int(round(trial.duration.total_seconds()))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def dev_summary(trial: optuna.trial.FrozenTrial) -> Tuple[Optional[float], Optional[float]]:
  """Mean and standard deviation (ddof=1; 0 for one seed) of the trial's per-seed dev F1."""
  values = list(trial.user_attrs.get("dev_f1", {}).values())
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _state_text(trial: optuna.trial.FrozenTrial, retried: Mapping[int, int]) -> str:
  state = trial.state.name
  if trial.state == optuna.trial.TrialState.PRUNED and "pruned_at_step" in trial.user_attrs:
    return f"PRUNED at step {trial.user_attrs['pruned_at_step']}"
  if trial.number in retried:
    return f"FAIL (worker lost; retried as {retried[trial.number]})"
  if trial.state == optuna.trial.TrialState.FAIL and "error" in trial.user_attrs:
    return f"FAIL: {trial.user_attrs['error']}"
  return state


def progress_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, n_trials: int) -> str:
  """One line about a finished trial: state, dev F1, duration, settings, the best so far."""
  mean, std = dev_summary(trial)
  parts = [f"[sweep] trial {trial.number}", _state_text(trial, {})]
  if trial.state == optuna.trial.TrialState.COMPLETE and mean is not None:
    parts.append(f"dev F1 {mean:.2f} ± {std:.2f}")
  elif trial.intermediate_values:
    step = max(trial.intermediate_values)
    parts.append(f"dev F1 {trial.intermediate_values[step]:.2f} at step {step}")
  parts.append(_duration(trial))
  if "compile_s" in trial.user_attrs:
    parts.append(f"compile {trial.user_attrs['compile_s']:.0f}s")
  parts.append(" ".join(f"{k}={_show(v)}" for k, v in trial.params.items()))
  try:
    best = study.best_trial
    parts.append(f"best: trial {best.number} ({best.value:.2f})")
  except ValueError:
    pass
  finished = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
  parts.append(f"{finished} finished of {n_trials}")
  return " | ".join(p for p in parts if p)


def _sort_key(trial: optuna.trial.FrozenTrial) -> Tuple[int, float]:
  states = optuna.trial.TrialState
  if trial.state == states.COMPLETE:
    return 0, -trial.value
  if trial.state == states.PRUNED:
    return 1, -max(trial.intermediate_values.values(), default=-math.inf)
  if trial.state in (states.RUNNING, states.WAITING):
    return 2, trial.number
  return 3, trial.number


def test_summary(study_dir: os.PathLike, trial: optuna.trial.FrozenTrial) -> Optional[Dict[str, Any]]:
  """The trial's test triplet F1 at each run's best dev step, from its runs' results.json.

  None when the runs did not evaluate test (`evaluate_test=False`) or are not on this
  machine. Reported only; nothing selects on it.
  """
  workdir = trial_dir(study_dir, original_number(trial))
  values = {}
  for seed in trial.user_attrs.get("dev_f1", {}):
    path = workdir / f"seed_{seed}" / "results.json"
    if not path.exists():
      return None
    test = json.loads(path.read_text()).get("test")
    if not test:
      return None
    values[seed] = float(test["triplet"]["f1"])
  if not values:
    return None
  array = np.asarray(list(values.values()))
  return {"per_seed": values, "mean": float(array.mean()),
          "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def flag_lines(config: settings.Settings, always: Iterable[str] = ()) -> List[str]:
  """`--name=value` lines for every setting of `config` that is not its default (and `always`)."""
  always = set(always)
  lines = []
  for name, field in settings.FIELDS.items():
    value = getattr(config, name)
    if (value == field.default and name not in always) or value is None:
      continue
    hint = settings.TYPES[name]
    if hint is bool:
      lines.append(f"--{name}" if value else f"--no{name}")
    elif isinstance(value, (tuple, list)):
      lines.append(f"--{name}={','.join(str(v) for v in value)}")
    elif isinstance(value, float):
      lines.append(f"--{name}={value!r}")
    else:
      lines.append(f"--{name}={value}")
  return lines


def _importances(study: optuna.Study) -> Tuple[Optional[Dict[str, float]], str]:
  """Optuna's parameter importances of the completed trials, or why there are none."""
  completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if len(completed) < 2:
    return None, f"needs at least 2 completed trials ({len(completed)} so far)"
  try:
    with _quiet_optuna():
      return dict(optuna.importance.get_param_importances(study)), ""
  except (ValueError, RuntimeError, ZeroDivisionError) as e:
    return None, f"the importance evaluator could not run: {_one_line(e)}"


def _save_plot(plot: Callable[[], Any], path: pathlib.Path) -> Optional[str]:
  """Draws one of optuna.visualization.matplotlib's plots to `path`; the reason when it cannot."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  try:
    with _quiet_optuna():
      axes = plot()
  except (ValueError, RuntimeError) as e:
    plt.close("all")
    return _one_line(e)
  figure = axes.figure if hasattr(axes, "figure") else np.ravel(axes)[0].figure
  figure.set_size_inches(9, 5.5)
  figure.tight_layout()
  fileio.write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"), suffix=".png")
  plt.close(figure)
  return None


def write_report(study: optuna.Study, base: TrainConfig, space: SearchSpace, config: SweepConfig,
                 n_trials: int) -> Dict[str, Any]:
  """Writes `sweep.md`, `best.flags` (when a trial completed) and the plots into `study_dir`.

  Returns:
    {"best": the best FrozenTrial or None, "test": its `test_summary`, "importances": ...}.
  """
  from optuna.visualization import matplotlib as plots  # pylint: disable=g-import-not-at-top

  study_dir = config.study_dir
  study_dir.mkdir(parents=True, exist_ok=True)
  trials = study.get_trials()
  by_number = {t.number: t for t in trials}
  retried = _lost_and_retried(trials)
  states = optuna.trial.TrialState
  counts = {state: sum(1 for t in trials if t.state == state) for state in states}
  try:
    best = study.best_trial
  except ValueError:
    best = None
  test = test_summary(study_dir, best) if best is not None else None
  importances, importance_note = _importances(study)

  seed_list = config.seeds(base)
  seeds = ("seeds " if len(seed_list) > 1 else "seed ") + ", ".join(str(s) for s in seed_list)
  lines = [f"# Sweep `{config.name}`", "",
           f"Objective: dev triplet F1 (%) at each run's best dev step, mean over {seeds}; maximised. "
           "Test scores are reported for the best trial only and never used to select.", "",
           f"Storage `{_safe_url(config.storage_url)}`, sampler {config.sampler}, pruner {config.pruner}"
           + (f" {json.dumps(dict(config.pruner_options))}" if config.pruner_options else "") + ". "
           f"Trials: {len(trials)} of {n_trials} requested ({counts[states.COMPLETE]} complete, "
           f"{counts[states.PRUNED]} pruned, {counts[states.FAIL]} failed, {counts[states.RUNNING]} running, "
           f"{counts[states.WAITING]} waiting).", "", "Searched: " + "; ".join(
               f"`{d.name}` {d.describe()}" for d in space.dimensions) + ".", ""]
  if best is not None:
    mean, std = dev_summary(best)
    per_seed = ", ".join(f"seed {s}: {v:.2f}" for s, v in best.user_attrs.get("dev_f1", {}).items())
    lines += [f"## Best trial: {best.number}", "",
              f"* dev triplet F1 {mean:.2f} ± {std:.2f} ({per_seed})"]
    if test is not None:
      lines.append(f"* test triplet F1 at the same best dev steps: {test['mean']:.2f} ± {test['std']:.2f} "
                   "(reported, not used to select)")
    else:
      lines.append("* test triplet F1: not available (test not evaluated, or the runs are on another machine)")
    lines += ["* settings: " + ", ".join(f"`{k}={_show(v)}`" for k, v in best.params.items()),
              f"* `python -m experiments.train --flagfile={study_dir / 'best.flags'} --workdir=DIR` trains it again",
              ""]
  enqueued = [t for t in trials if "enqueued_as" in t.user_attrs and original_number(t) == t.number]
  if enqueued:
    lines += ["## Named trials (from the search space's `enqueue`)", "", "| name | trial | state | dev F1 |",
              "|---|---|---|---|"]
    for trial in enqueued:
      final = trial
      while final.number in retried:
        final = by_number[retried[final.number]]
      mean, std = dev_summary(final)
      score = f"{mean:.2f} ± {std:.2f}" if mean is not None and final.state == states.COMPLETE else ""
      lines.append(f"| {trial.user_attrs['enqueued_as']} | {final.number} | {_state_text(final, retried)} "
                   f"| {score} |")
    lines.append("")
  lines += ["## Trials (sorted by objective)", "",
            "| trial | state | dev F1 (mean ± std) | per seed | duration | compile | " + " | ".join(space.names)
            + " | note |",
            "|---" * (7 + len(space.names)) + "|"]
  for trial in sorted(trials, key=_sort_key):
    mean, std = dev_summary(trial)
    score = f"{mean:.2f} ± {std:.2f}" if mean is not None and trial.state == states.COMPLETE else ""
    if trial.state == states.PRUNED and trial.intermediate_values:
      step = max(trial.intermediate_values)
      score = f"({trial.intermediate_values[step]:.2f} at step {step})"
    per_seed = ", ".join(f"{v:.2f}" for v in trial.user_attrs.get("dev_f1", {}).values())
    notes = []
    if "enqueued_as" in trial.user_attrs:
      notes.append(f"enqueued: {trial.user_attrs['enqueued_as']}")
    if original_number(trial) != trial.number:
      notes.append(f"retry of {original_number(trial)}")
    if trial.user_attrs.get("resumed_from_step"):
      notes.append("resumed from step " + ", ".join(
          f"{v} (seed {k})" for k, v in trial.user_attrs["resumed_from_step"].items()))
    compile_s = trial.user_attrs.get("compile_s")
    cells = [str(trial.number), _state_text(trial, retried).replace("|", "/"), score, per_seed, _duration(trial),
             "" if compile_s is None else f"{compile_s:.0f}s"]
    cells += [_show(trial.params[name]) if name in trial.params else "" for name in space.names]
    lines.append("| " + " | ".join(cells + ["; ".join(notes)]) + " |")
  lines += ["", "## Parameter importances", ""]
  if importances is not None:
    lines += ["| setting | importance |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in importances.items()]
  else:
    lines.append(f"Skipped: {importance_note}.")

  plot_notes = {}
  figures = {"optimization_history.png": plots.plot_optimization_history,
             "intermediate_values.png": plots.plot_intermediate_values,
             "param_importances.png": plots.plot_param_importances}
  for name, plot in figures.items():
    if name == "param_importances.png" and importances is None:
      plot_notes[name] = importance_note
      continue
    problem = _save_plot(lambda plot=plot: plot(study), study_dir / name)
    if problem:
      plot_notes[name] = problem
  lines += ["", "## Plots", ""]
  for name in figures:
    lines.append(f"* `{name}`" + (f": not drawn ({plot_notes[name]})" if name in plot_notes else ""))
  lines += ["", f"Each trial's runs: `{TRIALS_DIR}/<trial>/seed_<n>/` (a retry uses its original trial's "
            "directory). The study opens in `optuna-dashboard " + _safe_url(config.storage_url) + "`.", ""]
  fileio.write_text_atomic(study_dir / "sweep.md", "\n".join(lines))

  if best is not None:
    best_config = base.replace(**best.params)
    header = [f"# Best trial {best.number} of sweep {config.name!r}: dev triplet F1 {dev_summary(best)[0]:.2f} "
              f"(mean over {seeds})."]
    if test is not None:
      header.append(f"# Test triplet F1 {test['mean']:.2f} at the same steps (reported, not used to select).")
    header.append("# python -m experiments.train --flagfile=best.flags --workdir=DIR")
    fileio.write_text_atomic(study_dir / "best.flags",
                             "\n".join(header + flag_lines(best_config, always=best.params)) + "\n")
  return {"best": best, "test": test, "importances": importances}
