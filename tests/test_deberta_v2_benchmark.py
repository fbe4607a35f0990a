"""Smoke test of benchmarks/encoder_throughput.py on a tiny configuration (no timing asserted)."""

import importlib.util
import json
import pathlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_throughput.py"


def load_benchmark():
  spec = importlib.util.spec_from_file_location("encoder_throughput", BENCHMARK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmark_runs_and_prints_json_last(monkeypatch, capsys, tmp_path):
  benchmark = load_benchmark()
  # The real figures use a 128k vocabulary and width 768; the code path is the same.
  monkeypatch.setattr(benchmark, "BASE_CONFIG", {**benchmark.BASE_CONFIG, "vocab_size": 100, "hidden_size": 32,
                                                 "num_attention_heads": 4, "intermediate_size": 48,
                                                 "position_buckets": 8})
  # In process: "system", as "retain" would re-execute the test worker.
  figures = benchmark.main(["--repeats", "2", "--layers", "3", "--batch", "2", "--length", "12", "--json",
                            "--profile_dir", str(tmp_path), "--top_ops", "3", "--host_memory", "system"])
  last_line = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last_line) == json.loads(json.dumps(figures))
  for phase in ("forward", "forward_backward"):
    assert figures[f"ours_{phase}_tokens_per_s"] > 0 and figures[f"torch_{phase}_tokens_per_s"] > 0
    assert figures[f"{phase}_ratio"] == pytest.approx(figures[f"ours_{phase}_tokens_per_s"] /
                                                      figures[f"torch_{phase}_tokens_per_s"])
    for mode in ("scan", "unroll"):  # both loop modes, beside the same PyTorch measurements
      assert figures[f"{mode}_{phase}_ratio"] == pytest.approx(figures[f"{mode}_{phase}_tokens_per_s"] /
                                                               figures[f"torch_{phase}_tokens_per_s"])
      assert figures[f"{mode}_{phase}_cpu_s"] > 0 and figures[f"{mode}_{phase}_minor_faults"] >= 0
  assert figures["headline_layer_loop"] == figures["auto_layer_loop"]
  assert figures["ours_forward_tokens_per_s"] == figures[f"{figures['auto_layer_loop']}_forward_tokens_per_s"]
  assert figures["cpu_model"] and figures["torch_threads"] >= 1 and len(figures["load_average_before"]) == 3
  assert (figures["layers"], figures["batch"], figures["length"], figures["repeats"]) == (3, 2, 12, 2)
  # The FFN-shaped matmul of both frameworks, measured in the same loop.
  assert figures["matmul_shape"] == [2 * 12, 32, 48]
  assert figures["ours_matmul_gflops"] > 0 and figures["torch_matmul_gflops"] > 0
  assert figures["matmul_ratio"] == pytest.approx(figures["ours_matmul_gflops"] / figures["torch_matmul_gflops"])
  for mode in ("scan", "unroll"):
    rows = figures[f"{mode}_top_ops"]
    assert 0 < len(rows) <= 3 and all(row[1] in ("forward", "backward") for row in rows)


@pytest.mark.parametrize("flags", [["--repeats", "0"], ["--layer_loops", "while"], ["--layer_loops", ""]])
def test_benchmark_rejects_bad_flags(flags):
  with pytest.raises(SystemExit):
    load_benchmark().parse_args(flags)
