"""The hyperparameter sweep: d2e2s_jax/tuning.py and experiments/sweep.py.

Most tests stand a scripted `train_and_evaluate` in for the trainer (its contract: an
`on_evaluation` call per evaluation that may stop the run, `results.json` with the best
dev step's scores and `stopped_at_step`), so the objective, pruning, failures, retries
and outputs are checked in seconds; the CLI tests run the real trainer on the tiny
synthetic configuration of tests/test_trainer.py.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from absl import flags
import optuna
import pytest

from d2e2s_jax import settings, tuning
from d2e2s_jax.training import trainer
from d2e2s_jax.training.config import TrainConfig
from experiments import sweep as sweep_entry
from experiments import train as train_entry
from tests.test_trainer import TINY

REPO = pathlib.Path(__file__).resolve().parents[1]
SPACES = REPO / "experiments" / "configs" / "sweeps"
STATES = optuna.trial.TrialState
# Subprocesses: one CPU device and XLA's quickest optimisation level (as conftest sets).
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"}
# The real runs of the CLI tests: 4 steps, an evaluation and a checkpoint every 2.
TINY_RUN = dict(TINY, max_steps=4, eval_every=2, checkpoint_every=2)


def _write(path, value):
  path.write_text(json.dumps(value) if not isinstance(value, str) else value)
  return path


def _flagfile(path, **overrides):
  return _write(path, "\n".join(tuning.flag_lines(TrainConfig(**{**TINY_RUN, **overrides}))) + "\n")


def _parse_train_flags(*args):
  """experiments.train's flags parsed from `args`, as the TrainConfig it would run."""
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["train", "--workdir=/tmp/unused", *args])
    return train_entry.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()


def _sweep(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "experiments.sweep", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, **kwargs)


def _study(study_dir, name=None):
  url = f"sqlite:///{pathlib.Path(study_dir).absolute() / 'study.db'}"
  return optuna.load_study(study_name=name or pathlib.Path(study_dir).name, storage=url)


# ------------------------------------------------------------- the search space


def test_search_space_files_parse_and_trials_stay_inside_them():
  guide = tuning.load_search_space(SPACES / "guide.json")
  tuning.check_with_settings(guide, TrainConfig())
  demo = tuning.load_search_space(SPACES / "demo.json")
  tuning.check_with_settings(demo, TrainConfig())
  assert {d.distribution for d in guide.dimensions} == set(tuning.DISTRIBUTIONS)
  # The guide's two columns ("Complete Hyperparameter Comparison"), run first.
  assert dict(guide.enqueue) == {
      "old": {"lr": 5e-6, "drop_out_rate": 0.3, "prop_drop": 0.05, "gcn_dropout": 0.1, "max_span_size": 6,
              "neg_entity_count": 50, "neg_triple_count": 50, "batch_size": 16, "gradient_accumulation_steps": 1},
      "current": {"lr": 5e-5, "drop_out_rate": 0.5, "prop_drop": 0.1, "gcn_dropout": 0.2, "max_span_size": 8,
                  "neg_entity_count": 100, "neg_triple_count": 100, "batch_size": 16,
                  "gradient_accumulation_steps": 1}}
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  by_name = {d.name: d for d in guide.dimensions}
  for _ in range(30):
    trial = study.ask()
    params = guide.suggest(trial)
    assert all(by_name[name].contains(value) for name, value in params.items()), params
    TrainConfig().replace(**params)  # every sampled trial is a valid configuration
    study.tell(trial, 0.0)
  assert all(v % 25 == 0 for v in (t.params["neg_entity_count"] for t in study.trials))
  assert tuning.SearchSpace("x", guide.dimensions[:1]).grid() == {"lr": [5e-6, 5e-5]}
  assert guide.without(["lr", "batch_size"]).names == [n for n in guide.names if n not in ("lr", "batch_size")]
  assert all("lr" not in params for _, params in guide.without(["lr"]).enqueue)


def _range(low=0.1, high=0.5, **extra):
  return {"distribution": "uniform", "low": low, "high": high, **extra}


BAD_SPACES = [
    ({"parameters": {"learning_rate": _range()}}, "parameters.learning_rate: no such setting"),
    ({"parameters": {"drop_out_rate": _range(high=1.5)}}, "parameters.drop_out_rate: --drop_out_rate=1.5: must be "
     "in [0, 1)"),
    ({"parameters": {"drop_out_rate": _range(low=0.5, high=0.1)}}, "low (0.5) must be below high (0.1)"),
    ({"parameters": {"lr": {"distribution": "log_uniform", "low": 0, "high": 1e-3}}}, "needs low > 0"),
    ({"parameters": {"lr": {"distribution": "normal", "low": 0, "high": 1}}}, "\"distribution\" must be one of"),
    ({"parameters": {"max_span_size": {"distribution": "uniform", "low": 2, "high": 8}}},
     "parameters.max_span_size: a uniform distribution needs a float setting; --max_span_size is int"),
    ({"parameters": {"lr": {"distribution": "int", "low": 1, "high": 8}}}, "an int distribution needs an integer"),
    ({"parameters": {"max_span_size": {"distribution": "int", "low": 0, "high": 8}}},
     "parameters.max_span_size: --max_span_size=0: must be in [1, 100)"),
    ({"parameters": {"max_span_size": {"distribution": "int", "low": 2, "high": 9, "step": 2}}},
     "high - low (7) must be a multiple of step (2)"),
    ({"parameters": {"max_span_size": {"distribution": "int", "low": 2, "high": 8.5}}}, "high must be an integer"),
    ({"parameters": {"remat_policy": {"distribution": "categorical", "choices": ["full", "some"]}}},
     "parameters.remat_policy: --remat_policy=some: must be one of none, full"),
    ({"parameters": {"batch_size": {"distribution": "categorical", "choices": [8, 8]}}}, "lists a value twice"),
    ({"parameters": {"drop_out_rate": _range(grid=[0.3, 0.7])}}, "grid value 0.7 is not in uniform [0.1, 0.5]"),
    ({"parameters": {"drop_out_rate": _range(step=0.1)}}, "unknown key 'step' for a uniform distribution"),
    ({"parameters": {"drop_out_rate": _range()}, "enqueue": {"old": {"prop_drop": 0.1}}},
     "enqueue.old.prop_drop: not a parameter of this space"),
    ({"parameters": {"drop_out_rate": _range()}, "enqueue": {"old": {"drop_out_rate": 0.6}}},
     "enqueue.old.drop_out_rate: 0.6 is not in uniform [0.1, 0.5]"),
    ({"parameters": {"seed": {"distribution": "int", "low": 1, "high": 9}}}, "parameters.seed: the sweep sets the "
     "seeds"),
    ({"parameters": {}}, "parameters: must be a non-empty object"),
    ({"parameters": {"lr": _range()}, "trials": 3}, "trials: unknown key"),
]


@pytest.mark.parametrize("raw, message", BAD_SPACES, ids=[m.split(":")[0][:40] for _, m in BAD_SPACES])
def test_a_bad_search_space_is_one_line_naming_the_file_and_the_entry(raw, message):
  with pytest.raises(tuning.SpaceError) as error:
    tuning.parse_search_space(raw, "space.json")
  text = str(error.value)
  assert text.startswith("space.json: ") and message in text and "\n" not in text, text


def test_rules_between_settings_are_checked_over_the_space_and_the_fixed_flags():
  scratch = TrainConfig(**TINY)  # scratch_hidden_size=16
  space = tuning.parse_search_space({"parameters": {"attention_heads": {"distribution": "int", "low": 1,
                                                                          "high": 4}}}, "space.json")
  with pytest.raises(tuning.SpaceError, match=r"^space.json: parameters.attention_heads: with attention_heads=3: "
                     r"--attention_heads=3: must divide the encoder width \(--scratch_hidden_size=16\)$"):
    tuning.check_with_settings(space, scratch)
  sliced = scratch.replace(optimizer_update="sliced")
  accumulation = tuning.parse_search_space(
      {"parameters": {"gradient_accumulation_steps": {"distribution": "categorical", "choices": [1, 4]}}}, "s.json")
  with pytest.raises(tuning.SpaceError, match="must be 1 with --optimizer_update=sliced"):
    tuning.check_with_settings(accumulation, sliced)
  tuning.check_with_settings(accumulation, scratch)
  enqueued = tuning.parse_search_space({"parameters": {"scratch_heads": {"distribution": "categorical",
                                                                          "choices": [2, 4]}},
                                        "enqueue": {"x": {"scratch_heads": 4}}}, "s.json")
  tuning.check_with_settings(enqueued, scratch)


def test_the_grid_needs_listed_values_for_every_range():
  space = tuning.parse_search_space({"parameters": {"drop_out_rate": _range(),
                                                    "batch_size": {"distribution": "categorical",
                                                                   "choices": [8, 16]}}}, "space.json")
  with pytest.raises(tuning.SpaceError, match=r"^space.json: parameters.drop_out_rate: --sampler=grid needs listed "
                     r"values"):
    space.grid()


def test_command_line_flags_fix_settings_but_flagfiles_do_not():
  argv = ["--flagfile=x.flags", "--lr=1e-5", "-drop_out_rate", "0.2", "--noprogress_bar", "--study_dir=d", "--",
          "--prop_drop=0.1"]
  assert sweep_entry.command_line_settings(argv) == {"lr", "drop_out_rate", "progress_bar"}


def test_best_flags_lines_parse_back_to_the_same_settings():
  config = TrainConfig(**TINY).replace(lr=3.5e-4, evaluate_test=False, synthetic_sizes=(40, 10, 10),
                                       moment_dtype="bfloat16", mesh="data:1", max_grad_norm=0.0)
  lines = tuning.flag_lines(config, always=["batch_size"])
  assert "--batch_size=8" in lines and "--noevaluate_test" in lines and "--lr=0.00035" in lines
  assert _parse_train_flags(*lines) == config


# ------------------------------------------------- the objective, on a scripted trainer


def _scripted_trainer(monkeypatch, dev_f1, calls):
  """A stand-in `train_and_evaluate`: 4 steps, an evaluation at each, dev F1 `dev_f1(config, step)`.

  Test F1 is 100 - dev F1, so selecting on test would pick the worst trial.
  """

  def train_and_evaluate(config, workdir, on_evaluation=None):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    calls.append((workdir, config.seed, on_evaluation is not None))
    best, stopped = None, None
    for step in range(1, 5):
      f1 = dev_f1(config, step)
      scores = {"dev": {"triplet": {"f1": f1}}, "test": {"triplet": {"f1": 100.0 - f1}}}
      if best is None or f1 > best["dev"]["triplet"]["f1"]:
        best = {"step": step, **scores}
      if on_evaluation and on_evaluation(step, scores):
        stopped = step
        break
    results = {"best_step": best["step"], "dev": best["dev"], "test": best["test"], "total_steps": 4}
    for kind, step in (("latest", stopped or 4), ("best", best["step"])):
      (workdir / "checkpoints" / kind / str(step)).mkdir(parents=True, exist_ok=True)
    if stopped is not None:
      results["stopped_at_step"] = stopped
    (workdir / "results.json").write_text(json.dumps(results))
    return results

  monkeypatch.setattr(trainer, "train_and_evaluate", train_and_evaluate)


SCRIPTED_SPACE = {
    "parameters": {"lr": {"distribution": "log_uniform", "low": 1e-4, "high": 2e-3},
                   "drop_out_rate": {"distribution": "categorical", "choices": [0.1, 0.3]}},
    "enqueue": {"good": {"lr": 1e-3, "drop_out_rate": 0.1}, "bad": {"lr": 1e-4, "drop_out_rate": 0.3},
                "also_good": {"lr": 2e-3, "drop_out_rate": 0.1}},
}


def _learning(config, step):
  """Dev F1 rising with the step (slowly with dropout 0.3), higher with the lr, +seed."""
  return step * (10.0 if config.drop_out_rate == 0.1 else 1.0) + 1000 * config.lr + config.seed


def test_objective_is_the_mean_dev_f1_over_seeds_and_the_pruner_acts(tmp_path, monkeypatch):
  calls = []
  _scripted_trainer(monkeypatch, _learning, calls)
  space = tuning.parse_search_space(SCRIPTED_SPACE, "scripted.json")
  base = TrainConfig(**TINY)
  config = tuning.SweepConfig(study_dir=tmp_path / "study", n_trials=5, seeds_per_trial=2, sampler_seed=0,
                              pruner="threshold", pruner_options={"lower": 6.0})
  lines = []
  study = tuning.run_sweep(base, space, config, log=lines.append)
  trials = study.get_trials()
  assert len(trials) == 5 and len(lines) == 5 and all(line.startswith("[sweep] trial ") for line in lines)

  good, bad, also_good = trials[:3]
  assert [t.user_attrs["enqueued_as"] for t in trials[:3]] == ["good", "bad", "also_good"]
  assert good.state == STATES.COMPLETE
  assert good.user_attrs["dev_f1"] == {"1": 42.0, "2": 43.0} and good.user_attrs["best_step"] == {"1": 4, "2": 4}
  assert good.value == pytest.approx(42.5)
  # Intermediate values are the first seed's curve; only the first seed reports.
  assert good.intermediate_values == {1: 12.0, 2: 22.0, 3: 32.0, 4: 42.0}
  assert [(seed, reports) for workdir, seed, reports in calls if workdir.parent.name == "0"] == [(1, True), (2, False)]
  assert (tmp_path / "study" / "trials" / "0" / "seed_2" / "results.json").is_file()
  # A finished run keeps its best-dev checkpoint only (--keep_checkpoints=best); a pruned one both.
  assert [p.name for p in (tmp_path / "study" / "trials" / "0" / "seed_2" / "checkpoints").iterdir()] == ["best"]
  assert sorted(p.name for p in (tmp_path / "study" / "trials" / "1" / "seed_1" / "checkpoints").iterdir()) == [
      "best", "latest"]
  # The bad trial is pruned at its first evaluation (1 + 0.1 + 1 < 6) and its second seed never runs.
  assert bad.state == STATES.PRUNED and bad.value == pytest.approx(2.1)  # Optuna: its last intermediate value
  assert bad.user_attrs["pruned_at_step"] == 1 and bad.intermediate_values == {1: pytest.approx(2.1)}
  assert [seed for workdir, seed, _ in calls if workdir.parent.name == "1"] == [1]
  # Test scores never reach the study; the best trial is the best on dev (its test is the worst).
  assert all(not any("test" in key for key in t.user_attrs) for t in trials)
  assert study.best_trial.number == 2 and also_good.value == pytest.approx(43.5)

  report = (tmp_path / "study" / "sweep.md").read_text()
  assert "## Best trial: 2" in report and "dev triplet F1 43.50 ± 0.71 (seed 1: 43.00, seed 2: 44.00)" in report
  assert "test triplet F1 at the same best dev steps: 56.50 ± 0.71" in report
  assert "| good | 0 | COMPLETE | 42.50 ± 0.71 |" in report and "| bad | 1 | PRUNED at step 1 |  |" in report
  rows = [line for line in report.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:].isdigit()]
  completed = sorted((t for t in trials if t.state == STATES.COMPLETE), key=lambda t: -t.value)
  assert [int(row.split(" | ")[0][2:]) for row in rows[:len(completed)]] == [t.number for t in completed]
  for name in ("optimization_history.png", "intermediate_values.png", "param_importances.png"):
    assert (tmp_path / "study" / name).read_bytes()[:4] == b"\x89PNG", name
  assert "| lr |" in report and "| drop_out_rate |" in report  # importances
  best_flags = (tmp_path / "study" / "best.flags").read_text()
  assert _parse_train_flags(f"--flagfile={tmp_path / 'study' / 'best.flags'}") == base.replace(
      **study.best_trial.params)
  assert "--lr=0.002" in best_flags and "--drop_out_rate=0.1" in best_flags

  # n_trials is the study's total: running the same sweep again starts no trial.
  tuning.run_sweep(base, space, config, log=lines.append)
  assert len(_study(tmp_path / "study").trials) == 5
  # Joining the study with another space is refused.
  other = tuning.parse_search_space({"parameters": {"lr": SCRIPTED_SPACE["parameters"]["lr"]}}, "other.json")
  with pytest.raises(tuning.SweepError, match="created with another search space"):
    tuning.run_sweep(base, other, config)


def test_a_trial_that_raises_is_fail_with_its_error_and_the_sweep_goes_on(tmp_path, monkeypatch):
  def broken(config, workdir, on_evaluation=None):
    raise trainer.TrainingError("stopping at step 3: 20 consecutive steps had a non-finite loss\n(lower --lr)")

  monkeypatch.setattr(trainer, "train_and_evaluate", broken)
  space = tuning.parse_search_space({"parameters": SCRIPTED_SPACE["parameters"]}, "s.json")
  study = tuning.run_sweep(TrainConfig(**TINY), space, tuning.SweepConfig(study_dir=tmp_path, n_trials=2),
                           log=lambda line: None)
  assert [t.state for t in study.trials] == [STATES.FAIL, STATES.FAIL]
  assert all(t.value is None for t in study.trials)
  assert study.trials[0].user_attrs["error"] == ("TrainingError: stopping at step 3: 20 consecutive steps had a "
                                                 "non-finite loss (lower --lr)")
  report = (tmp_path / "sweep.md").read_text()
  assert "FAIL: TrainingError: stopping at step 3" in report and "## Best trial" not in report
  assert "Skipped: needs at least 2 completed trials (0 so far)" in report
  assert not (tmp_path / "best.flags").exists()


def test_the_grid_runs_every_listed_combination_once(tmp_path, monkeypatch):
  calls = []
  _scripted_trainer(monkeypatch, _learning, calls)
  space = tuning.parse_search_space({
      "parameters": {"lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2, "grid": [1e-4, 1e-3]},
                     "drop_out_rate": {"distribution": "categorical", "choices": [0.1, 0.3]}},
      "enqueue": {"skipped_by_the_grid": {"lr": 2e-3}}}, "grid.json")
  config = tuning.SweepConfig(study_dir=tmp_path, sampler="grid", pruner="none", keep_checkpoints="none")
  study = tuning.run_sweep(TrainConfig(**TINY), space, config, log=lambda line: None)
  assert sorted((t.params["lr"], t.params["drop_out_rate"]) for t in study.trials) == [
      (1e-4, 0.1), (1e-4, 0.3), (1e-3, 0.1), (1e-3, 0.3)]
  assert all(t.state == STATES.COMPLETE for t in study.trials)
  assert not any((tmp_path / "trials").glob("*/seed_1/checkpoints/*"))  # --keep_checkpoints=none


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the test asks trial 0 itself
def test_a_lost_trial_is_retried_in_its_own_workdir_and_skips_its_finished_seeds(tmp_path, monkeypatch):
  space = tuning.parse_search_space({"parameters": SCRIPTED_SPACE["parameters"]}, "s.json")
  base = TrainConfig(**TINY)
  config = tuning.SweepConfig(study_dir=tmp_path, n_trials=1, seeds_per_trial=2, heartbeat_interval=1,
                              grace_period=2)
  # A worker that started trial 0, finished its first seed and died (no more heartbeats).
  study = tuning.open_study(base, space, config)
  trial = study.ask()
  params = space.suggest(trial)
  study._storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access  # what its thread did
  calls = []
  _scripted_trainer(monkeypatch, _learning, calls)
  tuning.Objective(base, space, config)._claim(tuning.trial_dir(tmp_path, 0), 0, params)  # pylint: disable=protected-access
  trainer.train_and_evaluate(base.replace(**params, seed=1), tuning.trial_dir(tmp_path, 0) / "seed_1")
  calls.clear()
  time.sleep(3)  # past the grace period

  study = tuning.run_sweep(base, space, config, log=lambda line: None)
  lost, retry = study.get_trials()
  assert lost.state == STATES.FAIL and retry.state == STATES.COMPLETE and retry.params == lost.params
  assert tuning.original_number(retry) == 0
  assert [(workdir.relative_to(tmp_path).as_posix(), seed) for workdir, seed, _ in calls] == [("trials/0/seed_2", 2)]
  assert retry.value == pytest.approx(sum(_learning(base.replace(**params, seed=s), 4) for s in (1, 2)) / 2)
  assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["0"]
  report = (tmp_path / "sweep.md").read_text()
  assert "FAIL (worker lost; retried as 1)" in report and "retry of 0" in report


# ------------------------------------------------------------ the CLI, real training


def test_cli_rejects_a_bad_space_or_flag_before_any_trial(tmp_path):
  space = _write(tmp_path / "bad.json", {"parameters": {"drop_out_rate": _range(high=1.5)}})
  flagfile = _flagfile(tmp_path / "tiny.flags")
  common = [f"--flagfile={flagfile}", f"--study_dir={tmp_path / 'study'}", "--n_trials=2"]
  result = _sweep(*common, f"--search_space={space}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {space}: parameters.drop_out_rate: --drop_out_rate=1.5: must be in [0, 1)")
  assert not (tmp_path / "study").exists()
  only_lr = _write(tmp_path / "lr.json", {"parameters": {"lr": {"distribution": "log_uniform", "low": 1e-4,
                                                                  "high": 1e-2}}})
  result = _sweep(*common, f"--search_space={only_lr}", "--lr=1e-3")
  assert result.returncode == 1 and "note: --lr=0.001 on the command line fixes it" in result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith("parameters: the command line fixes every one; nothing "
                                                         "to search")
  result = _sweep(*common, f"--search_space={only_lr}", "--pruner=threshold")
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
      "error: --pruner_options={}: not valid for --pruner=threshold")


def test_cli_sweep_of_real_runs_writes_its_outputs_and_prunes(tmp_path):
  """Two trials of the real trainer, then a study whose pruner stops its run.

  The searched setting (max_consecutive_skips) does not enter the compiled programs, so
  the persistent compilation cache compiles them once for all runs.
  """
  flagfile = _flagfile(tmp_path / "tiny.flags")
  space = _write(tmp_path / "space.json", {
      "parameters": {"max_consecutive_skips": {"distribution": "categorical", "choices": [10, 20]}},
      "enqueue": {"first": {"max_consecutive_skips": 20}}})
  cache = f"--compilation_cache_dir={tmp_path / 'xla'}"
  study_dir = tmp_path / "study"
  result = _sweep(f"--flagfile={flagfile}", f"--search_space={space}", f"--study_dir={study_dir}", "--n_trials=2",
                  "--sampler_seed=0", cache, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  progress = [line for line in result.stdout.splitlines() if line.startswith("[sweep] trial")]
  assert len(progress) == 2 and all("COMPLETE" in line for line in progress), result.stdout
  assert "best trial " in result.stdout.splitlines()[-1]
  study = _study(study_dir)
  for trial in study.trials:
    assert sorted(trial.intermediate_values) == [2, 4]
    run = study_dir / "trials" / str(trial.number) / "seed_1"
    results = json.loads((run / "results.json").read_text())
    assert trial.value == results["dev"]["triplet"]["f1"] == trial.user_attrs["dev_f1"]["1"]
    assert trial.intermediate_values[results["best_step"]] == trial.value
    assert (run / "checkpoints" / "best").is_dir() and not (run / "checkpoints" / "latest").exists()
  best = study.best_trial
  test = json.loads((study_dir / "trials" / str(best.number) / "seed_1" / "results.json").read_text())["test"]
  assert f"{test['triplet']['f1']:.2f}" in (study_dir / "sweep.md").read_text()
  assert _parse_train_flags(f"--flagfile={study_dir / 'best.flags'}") == TrainConfig(**TINY_RUN).replace(
      **best.params)
  for name in ("optimization_history.png", "intermediate_values.png", "param_importances.png"):
    assert (study_dir / name).read_bytes()[:4] == b"\x89PNG", name

  # Pruning that acts: no dev F1 reaches 101, so the run stops at its first evaluation.
  pruned_dir = tmp_path / "pruned"
  result = _sweep(f"--flagfile={flagfile}", f"--search_space={space}", f"--study_dir={pruned_dir}", "--n_trials=1",
                  "--pruner=threshold", "--pruner_options={\"lower\": 101}", cache, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (trial,) = _study(pruned_dir).trials
  assert trial.state == STATES.PRUNED and list(trial.intermediate_values) == [2]
  run = pruned_dir / "trials" / "0" / "seed_1"
  assert json.loads((run / "results.json").read_text())["stopped_at_step"] == 2
  assert (run / "checkpoints" / "latest" / "2").is_dir()  # a pruned run keeps its checkpoint and logs
  assert max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()) == 2
  assert "PRUNED at step 2" in (pruned_dir / "sweep.md").read_text()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_retried_and_resumes_from_its_checkpoint(tmp_path):
  flagfile = _flagfile(tmp_path / "tiny.flags", max_steps=8, eval_every=2, checkpoint_every=2)
  space = _write(tmp_path / "space.json", {
      "parameters": {"max_consecutive_skips": {"distribution": "categorical", "choices": [10, 20]}}})
  study_dir = tmp_path / "study"
  command = [sys.executable, "-m", "experiments.sweep", f"--flagfile={flagfile}", f"--search_space={space}",
             f"--study_dir={study_dir}", "--n_trials=1", "--heartbeat_interval=1", "--grace_period=2",
             "--keep_checkpoints=all", f"--compilation_cache_dir={tmp_path / 'xla'}"]
  worker = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoint = study_dir / "trials" / "0" / "seed_1" / "checkpoints" / "latest" / "4"
  deadline = time.time() + 600
  while not checkpoint.is_dir():
    assert worker.poll() is None, "the worker ended before its step-4 checkpoint"
    assert time.time() < deadline
    time.sleep(0.05)
  worker.send_signal(signal.SIGKILL)
  worker.wait()
  assert [t.state for t in _study(study_dir).trials] == [STATES.RUNNING]
  time.sleep(3)  # past the grace period

  result = subprocess.run(command + ["--verbosity=0"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lost, retry = _study(study_dir).trials
  assert lost.state == STATES.FAIL and retry.state == STATES.COMPLETE
  assert tuning.original_number(retry) == 0 and retry.params == lost.params
  resumed = retry.user_attrs["resumed_from_step"]["1"]
  assert resumed >= 4 and f"resuming from step {resumed}" in result.stderr
  run = study_dir / "trials" / "0" / "seed_1"
  train_steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if r["split"] == "train"]
  assert train_steps == list(range(1, 9))  # every step once: the retry went on from the checkpoint
  assert sorted(retry.intermediate_values) == [2, 4, 6, 8]  # inherited up to the kill, then its own
  assert sorted(p.name for p in (study_dir / "trials").iterdir()) == ["0"]
  report = (study_dir / "sweep.md").read_text()
  assert "FAIL (worker lost; retried as 1)" in report and f"resumed from step {resumed} (seed 1)" in report


@pytest.mark.slow
def test_the_readme_demo_sweep_runs_offline(tmp_path):
  """The README's demo sweep, smaller: fewer sentences, one epoch, two trials."""
  study_dir = tmp_path / "demo_sweep"
  result = _sweep("--flagfile=experiments/configs/demo.flags", "--search_space=experiments/configs/sweeps/demo.json",
                  f"--study_dir={study_dir}", "--n_trials=2", "--epochs=1", "--synthetic_sizes=96,24,24",
                  "--noprogress_bar", f"--compilation_cache_dir={tmp_path / 'xla'}", timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  study = _study(study_dir)
  assert [t.state for t in study.trials] == [STATES.COMPLETE] * 2
  assert study.trials[0].params == {"lr": 1e-3, "drop_out_rate": 0.1}  # demo.flags' own values first
  # The second trial differs only in runtime hyperparameters: every program comes from the cache.
  assert study.trials[0].user_attrs["cache_misses"] > 0 and study.trials[1].user_attrs["cache_misses"] == 0
  assert "| compile |" in (study_dir / "sweep.md").read_text()
  assert "note: --epochs" not in result.stderr and (study_dir / "best.flags").is_file()
  assert _parse_train_flags(f"--flagfile={study_dir / 'best.flags'}").epochs == 1
