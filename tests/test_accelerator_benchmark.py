"""CPU smoke tests of benchmarks/accelerator.py, the prepared GPU/TPU benchmark (no timing asserted).

The device run happens in a later session with little device time, so its code paths run
here with tiny sizes: a step part in a subprocess (`--isolate yes`, what the device run
does), a step part and the torch comparison in this process (`--isolate no`), split over
two tests so that `pytest -n 2` runs them side by side. Between them they cover both
compute dtypes and both remat policies; the two remaining step parts are those settings
combined (each step part costs a compilation of the whole training step, 10-30 s here).
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator.py"

TINY = ["--layers", "2", "--hidden", "64", "--heads", "2", "--ffn", "128", "--vocab", "1000",
        "--position_buckets", "8", "--head_attention_heads", "2", "--batch", "2", "--length", "16",
        "--spans", "8", "--pairs", "8", "--edges", "64", "--warmup", "0", "--steps", "1",
        "--encoder_repeats", "1", "--peak_tflops", "0.1"]
STEP_KEYS = ("init_s", "lower_s", "compile_s", "step_s", "pipelined_step_s", "sentences_per_s", "tokens_per_s",
             "analytic_flops_per_step", "analytic_tflops_per_s", "xla_flops_per_step", "xla_over_analytic", "mfu",
             "mfu_xla", "peak_tflops", "peak_memory_gib", "compiled_peak_gib", "param_count", "dense_param_count",
             "final_loss")
ENCODER_KEYS = tuple(f"{who}_{phase}_{figure}" for who in ("ours", "torch") for phase in ("forward", "forward_backward")
                     for figure in ("s", "tokens_per_s", "tflops_per_s", "mfu")) + (
                         "forward_ratio", "forward_backward_ratio", "ours_compile_s", "peak_tflops")


def load_benchmark():
  spec = importlib.util.spec_from_file_location("accelerator_benchmark", BENCHMARK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def numbers(tree, path=""):
  """Every number in a nested JSON value, with its path."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from numbers(value, f"{path}/{key}")
  elif isinstance(tree, list):
    for index, value in enumerate(tree):
      yield from numbers(value, f"{path}/{index}")
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield path, tree


def run(capsys, tmp_path, *flags):
  """Runs main, checks the printed JSON, the --output file and that no figure is NaN/inf."""
  output = tmp_path / "out" / "accelerator.json"
  figures = load_benchmark().main([*TINY, *flags, "--json", "--output", str(output)])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads(output.read_text()) == json.loads(json.dumps(figures))
  for path, value in numbers(printed):
    assert math.isfinite(value), path
  for name, row in printed["parts"].items():
    assert "error" not in row, (name, row["error"])
  assert printed["meta"]["versions"]["jax"]
  return printed


def check_step(row, compute_dtype, remat):
  for key in STEP_KEYS:
    assert key in row, key
  assert (row["compute_dtype"], row["remat_policy"]) == (compute_dtype, remat)
  assert row["total_skips"] == 0 and row["steps_timed"] == 1
  assert row["tokens_per_s"] == pytest.approx(2 * 16 / row["step_s"])
  assert row["mfu"] == pytest.approx(row["analytic_flops_per_step"] / row["step_s"] / 1e11)
  assert row["peak_source"] == "--peak_tflops" and row["mfu_basis"] == "analytic"
  assert row["platform"] == "cpu" and row["peak_memory_source"] == "memory_analysis"


def test_step_part_in_a_subprocess(capsys, tmp_path):
  # The lean part: bfloat16 + remat like step_bf16_remat, plus the lean optimizer.
  figures = run(capsys, tmp_path, "--parts", "step_lean", "--isolate", "yes")
  assert list(figures["parts"]) == ["step_lean"]
  check_step(figures["parts"]["step_lean"], "bfloat16", "full")
  assert figures["parts"]["step_lean"]["optimizer"]["optimizer_update"] == "sliced"


# Between the two long tests: `pytest -n 2` hands each worker two tests first.
def test_synthetic_batch_follows_the_batch_contract():
  benchmark = load_benchmark()
  args = benchmark.parse_args([*TINY, "--batch", "3", "--length", "32", "--spans", "40", "--pairs", "12",
                               "--edges", "120"])
  batch = benchmark.synthetic_batch(args, max_span_size=6, seed=1)
  spec = benchmark.memory_plan.batch_spec(args)
  assert set(batch) == set(spec)
  for key, (shape, dtype) in spec.items():
    assert batch[key].shape == shape and batch[key].dtype == np.dtype(dtype), key
  assert batch["example_mask"].all() and (batch["attention_mask"] == 1).all()
  assert (batch["input_ids"][:, 0] == 1).all() and (batch["input_ids"][:, -1] == 2).all()
  for row in range(3):
    spans = batch["span_mask"][row]
    starts, ends = batch["span_token_bounds"][row, spans].T
    assert spans.sum() > 0 and ((1 <= starts) & (starts < ends) & (ends <= 31)).all()
    words = batch["span_word_bounds"][row, spans]
    assert (batch["span_sizes"][row, spans] == words[:, 1] - words[:, 0]).all()
    assert (batch["span_sizes"][row, spans] <= 6).all() and (batch["span_sizes"][row, ~spans] == 0).all()
    assert set(batch["span_labels"][row, spans]) <= {0, 1, 2} and (batch["span_labels"][row] > 0).any()
    pairs = batch["pair_indices"][row, batch["pair_mask"][row]]
    assert len(pairs) == 12 and (pairs[:, 0] != pairs[:, 1]).all() and spans[pairs].all()
    assert batch["pair_labels"][row].sum() > 0 and batch["pair_labels"][row, ~batch["pair_mask"][row]].sum() == 0
    edges = batch["graph_edge_mask"][row]
    senders, receivers = batch["graph_senders"][row, edges], batch["graph_receivers"][row, edges]
    pairs_set = set(zip(senders.tolist(), receivers.tolist()))
    assert len(pairs_set) == len(senders) and all((r, s) in pairs_set for s, r in pairs_set)
    assert all((i, i) in pairs_set for i in range(32)) and len(pairs_set) > 32


def test_step_part_and_torch_comparison_in_process(capsys, tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  figures = run(capsys, tmp_path, "--parts", "step_f32,encoder", "--isolate", "no")
  assert set(figures["parts"]) == {"step_f32", "encoder"}
  check_step(figures["parts"]["step_f32"], "float32", "none")
  encoder = figures["parts"]["encoder"]
  assert encoder["torch_device"] == "cpu" and encoder["same_device"] and encoder["layers"] == 2
  assert "torch_error" not in encoder
  for dtype in ("float32", "bfloat16"):
    for key in ENCODER_KEYS:
      assert key in encoder[dtype], (dtype, key)
    assert encoder[dtype]["forward_ratio"] == pytest.approx(
        encoder[dtype]["ours_forward_tokens_per_s"] / encoder[dtype]["torch_forward_tokens_per_s"])


def test_encoder_part_without_torch_times_ours_alone(monkeypatch, capsys, tmp_path):
  benchmark = load_benchmark()
  monkeypatch.setattr(benchmark, "_load_torch", lambda platform: "ImportError: no torch here")
  figures = benchmark.main([*TINY, "--parts", "encoder", "--isolate", "no", "--encoder_dtypes", "bfloat16",
                            "--output", str(tmp_path / "out.json")])
  encoder = figures["parts"]["encoder"]
  assert encoder["torch_error"] == "ImportError: no torch here" and "error" not in encoder
  assert encoder["bfloat16"]["ours_forward_backward_tokens_per_s"] > 0 and "forward_ratio" not in encoder["bfloat16"]
  assert "no torch comparison" in capsys.readouterr().out


def test_a_failing_part_is_recorded_as_an_error(capsys, tmp_path):
  # 16 edges cannot hold a 16-piece sentence's self-loops and within-word edges: the
  # subprocess fails while building the batch, before compiling anything.
  output = tmp_path / "out.json"
  figures = load_benchmark().main([*TINY, "--parts", "step_f32", "--edges", "16", "--output", str(output)])
  error = figures["parts"]["step_f32"]["error"]
  assert error.startswith("exit status 1") and "ValueError: --edges 16 cannot hold" in error
  assert json.loads(output.read_text())["parts"]["step_f32"]["error"] == error
  assert "step_f32         ERROR exit status 1" in capsys.readouterr().out


def test_budget_skips_parts_and_still_writes_json(capsys, tmp_path):
  output = tmp_path / "accelerator.json"
  figures = load_benchmark().main([*TINY, "--budget_s", "1", "--json", "--output", str(output)])
  assert json.loads(output.read_text()) == json.loads(json.dumps(figures))
  assert list(figures["parts"]) == ["step_bf16_remat", "step_lean", "step_f32_remat", "encoder", "step_f32"]
  assert all(row["error"].startswith("skipped") for row in figures["parts"].values())
  assert "ERROR skipped" in capsys.readouterr().out


def test_peak_comes_from_the_flag_or_the_library_table():
  benchmark = load_benchmark()
  args = benchmark.parse_args([])
  bf16 = benchmark.peak_tflops(args, "NVIDIA H200", "bfloat16")
  assert bf16["peak_tflops"] == 989.0 and bf16["peak_class"] == "bfloat16"
  assert bf16["peak_source"] == "throughput.PEAK_TFLOPS['h200']['bfloat16'] for device_kind 'NVIDIA H200'"
  assert benchmark.peak_tflops(args, "NVIDIA H100 PCIe", "bfloat16")["peak_tflops"] == 756.0
  assert "peak_tflops" not in benchmark.peak_tflops(args, "cpu", "bfloat16")
  assert benchmark.peak_tflops(benchmark.parse_args(["--peak_tflops", "3"]), "cpu", "float32")["peak_tflops"] == 3
  assert benchmark.mfu(2e12, 0.5, {"peak_tflops": 8.0}) == pytest.approx(0.5)
  assert benchmark.mfu(2e12, 0.5, {}) is None


@pytest.mark.parametrize("flags", [["--parts", "step_tpu"], ["--steps", "0"], ["--edges", "8"],
                                   ["--encoder_dtypes", "float16"], ["--hidden", "100", "--heads", "3"]])
def test_rejects_bad_flags(flags):
  with pytest.raises(SystemExit):
    load_benchmark().parse_args(flags)
