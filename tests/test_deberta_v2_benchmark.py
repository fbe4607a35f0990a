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


def test_benchmark_runs_and_prints_json_last(monkeypatch, capsys):
  benchmark = load_benchmark()
  # The real figures use a 128k vocabulary and width 768; the code path is the same.
  monkeypatch.setattr(benchmark, "BASE_CONFIG", {**benchmark.BASE_CONFIG, "vocab_size": 100, "hidden_size": 32,
                                                 "num_attention_heads": 4, "intermediate_size": 48,
                                                 "position_buckets": 8})
  figures = benchmark.main(["--repeats", "2", "--layers", "2", "--batch", "2", "--length", "12", "--json"])
  last_line = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last_line) == pytest.approx(figures)
  for phase in ("forward", "forward_backward"):
    assert figures[f"ours_{phase}_tokens_per_s"] > 0 and figures[f"torch_{phase}_tokens_per_s"] > 0
    assert figures[f"{phase}_ratio"] == pytest.approx(figures[f"ours_{phase}_tokens_per_s"] /
                                                      figures[f"torch_{phase}_tokens_per_s"])
  assert (figures["layers"], figures["batch"], figures["length"], figures["repeats"]) == (2, 2, 12, 2)


def test_benchmark_rejects_bad_flags():
  with pytest.raises(SystemExit):
    load_benchmark().parse_args(["--repeats", "0"])
