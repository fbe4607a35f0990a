"""Smoke tests of benchmarks/train_step.py, predictor_throughput.py, memory_plan.py, decode.py (no timing asserted).

Each benchmark runs as a subprocess with tiny settings and must print one JSON object
with the expected keys as its last line. Compiling the full D2E2S training step takes
one to three minutes on a loaded two-core machine even for a tiny model, so the runs
that compile are marked slow; the flag checks and the no-data path run by default.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from d2e2s_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

TINY_MEMORY_FLAGS = ["--layers", "2", "--vocab", "300", "--hidden", "32", "--heads", "2", "--ffn", "48",
                     "--head_hidden", "16", "--head_attention_heads", "2", "--position_buckets", "8",
                     "--batch", "8", "--length", "16", "--spans", "24", "--pairs", "16", "--edges", "48"]


def run_benchmark(name, *flags, timeout=900):
  # The benchmark sets its own device count; drop the test session's XLA_FLAGS.
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  completed = subprocess.run([sys.executable, str(BENCHMARKS / name), *flags, "--json"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=timeout, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["train_step.py", "predictor_throughput.py"])
def test_benchmarks_report_missing_data_as_skipped(tmp_path, name):
  flags = ["--configs", "tiny"] if name == "train_step.py" else ["--config", "tiny"]
  figures = run_benchmark(name, *flags, "--data_dir", str(tmp_path))
  assert figures["skipped"].startswith("skipped: no ASTE data")


def load_benchmark(name):
  spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name, flags", [
    ("train_step", ["--configs", "huge"]),
    ("train_step", ["--steps", "0"]),
    ("train_step", ["--plan_repeats", "-1"]),
    ("train_step", ["--eval_compile_configs", "huge"]),
    ("train_step", ["--layer_loops", "while"]),
    ("predictor_throughput", ["--layer_loops", "scan,while"]),
    ("predictor_throughput", ["--repeats", "0"]),
    ("memory_plan", ["--variants", "adamw_tpu"]),
    ("memory_plan", ["--hidden", "64", "--head_hidden", "64"]),
    ("decode", ["--regimes", "sleepy"]),
    ("decode", ["--k", "1"]),
])
def test_benchmarks_reject_bad_flags(name, flags):
  with pytest.raises(SystemExit):
    load_benchmark(name).parse_args(flags)


def test_decode_reports_the_host_pieces_beside_the_device_decoding(capsys):
  benchmark = load_benchmark("decode")
  returned = benchmark.main(["--repeats", "1", "--batch", "3", "--spans", "40", "--k", "5", "--json"])
  figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert figures == json.loads(json.dumps(returned))
  assert sorted(figures["regimes"]) == ["trained", "typical", "unselective"]
  for values in figures["regimes"].values():
    assert values["device_decode_ms"] > 0
    for piece in ("eval", "predictions", "sets", "fetch"):
      assert values[f"{piece}_ms"] > 0
      assert values[f"{piece}_over_device_decode"] == pytest.approx(values[f"{piece}_ms"] / values["device_decode_ms"])
    assert not [key for key in values if key.startswith(("reference", "ours"))]
  unselective = figures["regimes"]["unselective"]
  assert unselective["on_outputs_per_batch"] == 3 * 5 * 4 * 4  # everything on
  assert 0 < unselective["triplets_per_batch"] <= unselective["on_outputs_per_batch"]


@pytest.mark.slow
def test_train_step_runs_tiny_and_prints_json_last(shared_data_dir):
  figures = run_benchmark("train_step.py", "--configs", "tiny", "--steps", "1", "--eval_batches", "1",
                          "--plan_repeats", "1", "--eval_compile_configs", "", "--data_dir", str(shared_data_dir))
  tiny = figures["configs"]["tiny"]
  for key in ("train_build_s", "train_transfer_s", "train_step_s", "train_fetch_s", "train_sentences_per_s",
              "build_over_step", "train_step_traces", "train_distinct_shapes", "train_token_efficiency",
              "eval_predict_s", "eval_decode_s", "eval_sentences_per_s", "decode_over_predict", "plan_train_s",
              "epoch_replanning_over_epoch_device", "eval_replanning_over_eval_device",
              "eval_compile_separate_estimated_s", "eval_compile_merged_estimated_s"):
    assert key in tiny, key
  assert not [key for key in tiny if key.startswith("fix")]
  assert tiny["train_step_traces"] == tiny["train_compiled_shapes"] == 1
  assert 0 < tiny["train_token_efficiency"] <= 1
  planning = figures["planning"]
  # Dev and test sharing one plan never need more shapes than separate plans.
  assert 1 <= planning["eval_shapes_merged"] <= planning["eval_shapes_separate"]
  assert planning["epoch_build_old_s"] > 0 and planning["steps_per_epoch"] > 0


@pytest.mark.slow
def test_layer_loop_benchmarks_run_tiny_and_print_json_last(shared_data_dir):
  figures = run_benchmark("train_step.py", "--configs", "tiny", "--skip_main", "--layer_loops", "scan,unroll",
                          "--steps", "1", "--eval_batches", "1", "--data_dir", str(shared_data_dir))
  assert figures["configs"] == {} and figures["cpu_model"]
  tiny = figures["layer_loops"]["tiny"]
  for mode in ("scan", "unroll"):
    assert tiny[mode]["train_sentences_per_s"] > 0 and tiny[mode]["eval_sentences_per_s"] > 0
  assert tiny["unroll_over_scan_train_step_s"] == pytest.approx(tiny["unroll"]["train_step_s"] /
                                                                 tiny["scan"]["train_step_s"])
  figures = run_benchmark("predictor_throughput.py", "--config", "tiny", "--sentences", "20", "--repeats", "1",
                          "--data_dir", str(shared_data_dir))
  assert figures["sentences"] == 20 and figures["scan_sentences_per_s"] > 0 and figures["unroll_sentences_per_s"] > 0
  assert figures["unroll_over_scan_pass_s"] == pytest.approx(figures["unroll_pass_s"] / figures["scan_pass_s"])


@pytest.mark.slow
def test_memory_plan_runs_tiny_and_prints_json_last():
  figures = run_benchmark("memory_plan.py", *TINY_MEMORY_FLAGS, "--variants", "lean_full_bf16_factored_bf16m")
  assert figures["devices"] == 8 and figures["param_count"] > 0
  row = figures["variants"]["lean_full_bf16_factored_bf16m"]
  for key in ("argument_gib", "output_gib", "temp_gib", "alias_gib", "peak_gib", "params_gib", "opt_state_gib",
              "grads_gib", "compile_s", "fits_goal"):
    assert key in row, key
  assert row["peak_gib"] == pytest.approx(row["argument_gib"] + row["output_gib"] + row["temp_gib"]
                                          - row["alias_gib"])
  # A bfloat16 first moment (and a second moment factored where a matrix has a side of at least
  # 128): less than float32 AdamW's two moments.
  assert row["opt_state_gib"] < 2 * row["params_gib"]


@pytest.mark.parametrize("name, flags", [
    ("torch_step", ["--configs", "huge"]),
    ("torch_step", ["--threads", "0"]),
    ("epoch", ["--per_octave", "3"]),
    ("epoch", ["--epochs", "0"]),
])
def test_epoch_and_torch_step_reject_bad_flags(name, flags):
  with pytest.raises(SystemExit):
    load_benchmark(name).parse_args(flags)


@pytest.mark.parametrize("name", ["torch_step.py", "epoch.py"])
def test_epoch_and_torch_step_report_missing_data_as_skipped(name, tmp_path):
  figures = run_benchmark(name, "--data_dir", str(tmp_path))
  assert figures["skipped"].startswith("skipped: no ASTE data")


@pytest.mark.slow
def test_torch_step_runs_tiny_and_prints_json_last(shared_data_dir):
  figures = run_benchmark("torch_step.py", "--configs", "tiny", "--steps", "1", "--data_dir", str(shared_data_dir))
  assert figures["cpu_model"] and figures["torch_threads"] == os.cpu_count()
  assert figures["host_memory"]["mode"] == ("retain" if host_memory.is_glibc() else "system")
  tiny = figures["configs"]["tiny"]
  assert tiny["losses_finite"] and tiny["compile_s"] > 0
  assert tiny["ours_page_faults_per_step"] >= 0 and tiny["torch_page_faults_per_step"] >= 0
  assert len(tiny["ours_page_faults_all"]) == len(tiny["torch_page_faults_all"]) == len(tiny["ours_step_s_all"]) == 1
  assert tiny["ours_over_torch"] == pytest.approx(tiny["ours_sentences_per_s"] / tiny["torch_sentences_per_s"])
  # PyTorch gets the batch padded to its longest sentence, ours to a bucket: never longer.
  assert all(shape[0] <= tiny["ours_shape"][0] for shape in tiny["torch_shapes"])


@pytest.mark.slow
def test_epoch_runs_both_arms_and_prints_json_last(shared_data_dir):
  figures = run_benchmark("epoch.py", "--max_batches", "1", "--epochs", "1", "--data_dir", str(shared_data_dir))
  assert figures["cpu_model"]
  for arm in ("plain", "grouped"):
    values = figures[arm]
    assert values["steps"] == values["compilations"] == values["distinct_shapes"] == 1
    assert 0 < values["token_efficiency"] <= 1 and values["tokens_per_s"] > 0
  assert figures["plain_over_grouped"] == pytest.approx(figures["plain"]["epoch_s"] / figures["grouped"]["epoch_s"])
