"""Smoke tests of benchmarks/train_step.py and benchmarks/memory_plan.py (no timing asserted).

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


def test_train_step_reports_missing_data_as_skipped(tmp_path):
  figures = run_benchmark("train_step.py", "--configs", "tiny", "--data_dir", str(tmp_path))
  assert figures["skipped"].startswith("skipped: no ASTE data")


def load_benchmark(name):
  spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name, flags", [
    ("train_step", ["--configs", "huge"]),
    ("train_step", ["--steps", "0"]),
    ("train_step", ["--fixes", "lstm_unknown"]),
    ("train_step", ["--fix_repeats", "-1"]),
    ("train_step", ["--eval_compile_configs", "huge"]),
    ("memory_plan", ["--variants", "adamw_tpu"]),
    ("memory_plan", ["--hidden", "64", "--head_hidden", "64"]),
])
def test_benchmarks_reject_bad_flags(name, flags):
  with pytest.raises(SystemExit):
    load_benchmark(name).parse_args(flags)


def test_train_step_old_implementations_compute_the_same():
  """The replaced code kept in train_step.py (the fixes' A/B baseline) computes what the
  library computes now, forward and gradients; `reverted` puts the library back."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.models import d2e2s, gcn, lstm  # pylint: disable=import-outside-toplevel

  train_step = load_benchmark("train_step")
  rng = np.random.default_rng(0)
  inputs = rng.standard_normal((3, 7, 6)).astype(np.float32)
  mask = np.arange(7)[None, :] < np.asarray([[7], [4], [1]])
  weights = rng.standard_normal((3, 7, 10)).astype(np.float32)
  model = lstm.BiLSTM(5, 2)
  params = model.init(jax.random.key(0), inputs, mask)

  def lstm_grads():  # traced afresh: a new function each call
    return jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply(p, x, mask) * weights), argnums=(0, 1)))(params, inputs)

  current = lstm_grads()
  for fix in ("lstm_backward", "lstm_transposed_kernel"):
    with train_step.reverted([fix]):
      old = lstm_grads()
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(current)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=fix)

  edges = gcn.SyntacticEdges(np.asarray([[0, 1, 2, 1, 0]] * 3, np.int32), np.asarray([[0, 1, 2, 0, 1]] * 3, np.int32),
                             np.ones((3, 5), bool))
  new_gcn, old_gcn = gcn.SynGCN(6), train_step._TwoMatmulSynGCN(6)  # pylint: disable=protected-access
  gcn_params = new_gcn.init(jax.random.key(1), inputs, edges)
  gcn_grads = [jax.grad(lambda p, x, m=module: jnp.sum(m.apply(p, x, edges) * weights[..., :6]), argnums=(0, 1))(
      gcn_params, inputs) for module in (new_gcn, old_gcn)]
  for a, b in zip(*(jax.tree.leaves(grads) for grads in gcn_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

  originals = (lstm._bidirectional_recurrence, d2e2s.SynGCN)  # pylint: disable=protected-access
  with train_step.reverted(list(train_step.OLD_IMPLEMENTATIONS)):
    # The autodiff recurrence wins over the untransposed one (both patch the same name).
    assert lstm._bidirectional_recurrence is train_step._autodiff_recurrence  # pylint: disable=protected-access
    assert d2e2s.SynGCN is train_step._TwoMatmulSynGCN  # pylint: disable=protected-access
  assert (lstm._bidirectional_recurrence, d2e2s.SynGCN) == originals  # pylint: disable=protected-access


@pytest.mark.slow
def test_train_step_runs_tiny_and_prints_json_last(shared_data_dir):
  figures = run_benchmark("train_step.py", "--configs", "tiny", "--steps", "1", "--eval_batches", "1",
                          "--plan_repeats", "1", "--eval_compile_configs", "", "--fix_repeats", "1",
                          "--fixes", "syn_gcn_one_matmul", "--data_dir", str(shared_data_dir))
  tiny = figures["configs"]["tiny"]
  for key in ("train_build_s", "train_transfer_s", "train_step_s", "train_fetch_s", "train_sentences_per_s",
              "build_over_step", "train_step_traces", "train_distinct_shapes", "train_token_efficiency",
              "eval_predict_s", "eval_decode_s", "eval_sentences_per_s", "decode_over_predict", "plan_train_s",
              "epoch_replanning_over_epoch_device", "eval_replanning_over_eval_device",
              "eval_compile_separate_estimated_s", "eval_compile_merged_estimated_s",
              "fixes_train_step_ratio", "fixes_predict_step_ratio", "fix_syn_gcn_one_matmul_train_step_ratio"):
    assert key in tiny, key
  assert tiny["train_step_traces"] == tiny["train_compiled_shapes"] == 1
  assert 0 < tiny["train_token_efficiency"] <= 1
  planning = figures["planning"]
  # Dev and test sharing one plan never need more shapes than separate plans.
  assert 1 <= planning["eval_shapes_merged"] <= planning["eval_shapes_separate"]
  assert planning["epoch_build_old_s"] > 0 and planning["steps_per_epoch"] > 0


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
