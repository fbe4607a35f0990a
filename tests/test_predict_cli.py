"""`python -m experiments.predict` and `python -m experiments.export` as subprocesses."""

import json
import os
import pathlib
import subprocess
import sys

from tests.test_inference import biased_bundle, parser_dir, tiny_run  # noqa: F401  # shared fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600, check=False)


def _one_error_line(result, *fragments):
  assert result.returncode == 1, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_predict_text_with_the_bundle_parser(biased_bundle, tmp_path):  # noqa: F811
  sentences = tmp_path / "sentences.txt"
  sentences.write_text("the staff is rude .\n\nthe wine list is long\n")
  result = _run("experiments.predict", f"--workdir={biased_bundle}", "--text=the pizza was great .", "--text=",
                f"--input={sentences}", "--input_format=text")
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert len(records) == 5
  assert records[0]["tokens"] == ["the", "pizza", "was", "great", "."]
  assert records[0]["triplets"] and records[0]["triplets"][0]["sentiment"] == "POSITIVE"
  assert records[1] == {"text": "", "error": "sentence 1: empty sentence"}
  assert records[2]["text"] == "the staff is rude ." and records[2]["triplets"]
  assert records[3] == {"text": "", "error": "sentence 3: empty sentence"}
  assert records[4]["tokens"] == ["the", "wine", "list", "is", "long"]
  assert "2 of 5 sentence(s) could not be predicted" in result.stderr
  assert "predict: 100%" in result.stderr  # the progress bar of a file


def test_predict_d2e2s_file_to_output(tiny_run, tmp_path):  # noqa: F811
  gold = tiny_run / "data" / "aste" / "synthetic" / "test_dep_triple_polarity_result.json"
  output = tmp_path / "out" / "predictions.jsonl"
  result = _run("experiments.predict", f"--workdir={tiny_run}", f"--input={gold}", "--input_format=d2e2s",
                f"--output={output}", "--which=latest")
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in output.read_text().splitlines()]
  gold_records = json.loads(gold.read_text())
  assert [r["id"] for r in records] == [str(g["orig_id"]) for g in gold_records]
  assert all(r["tokens"] == g["tokens"] for r, g in zip(records, gold_records))
  assert sorted(p.name for p in output.parent.iterdir()) == ["predictions.jsonl"]  # no temporary file left


def test_predict_writes_the_training_predictions_format(tiny_run, tmp_path):  # noqa: F811
  """--output_format=d2e2s on the test split from the best checkpoint: the file training
  wrote for that step, and experiments.evaluate scores it to results.json's numbers."""
  gold = tiny_run / "data" / "aste" / "synthetic" / "test_dep_triple_polarity_result.json"
  output = tmp_path / "test_predicted.json"
  result = _run("experiments.predict", f"--workdir={tiny_run}", f"--input={gold}", "--input_format=d2e2s",
                f"--output={output}", "--output_format=d2e2s")
  assert result.returncode == 0, result.stderr
  assert json.loads(output.read_text()) == json.loads((tiny_run / "predictions" / "test_best.json").read_text())
  scored = _run("experiments.evaluate", f"--gold={gold}", f"--predictions={output}")
  assert scored.returncode == 0, scored.stderr
  assert json.loads(scored.stdout) == json.loads((tiny_run / "results.json").read_text())["test"]


def test_bad_input_file_is_one_line_and_writes_nothing(tiny_run, tmp_path):  # noqa: F811
  bad = tmp_path / "bad.json"
  bad.write_text('[{"orig_id": 1, "tokens": ["a", "b"], "entities": "oops"}]')
  output = tmp_path / "out.jsonl"
  result = _run("experiments.predict", f"--workdir={tiny_run}", f"--input={bad}", "--input_format=d2e2s",
                f"--output={output}")
  _one_error_line(result, str(bad))
  assert list(tmp_path.iterdir()) == [bad]


def test_raw_text_without_a_parser_is_one_line(tiny_run):  # noqa: F811
  result = _run("experiments.predict", f"--workdir={tiny_run}", "--text=the pizza was great .")
  _one_error_line(result, "need a dependency parser", "--parser")
  assert result.stdout == ""


def test_export_then_refuse_to_overwrite(tiny_run, parser_dir, tmp_path):  # noqa: F811
  bundle = tmp_path / "bundle"
  result = _run("experiments.export", f"--workdir={tiny_run}", f"--output={bundle}", f"--parser={parser_dir}")
  assert result.returncode == 0, result.stderr
  assert (bundle / "bundle.json").is_file() and (bundle / "parser" / "config.cfg").is_file()
  again = _run("experiments.export", f"--workdir={tiny_run}", f"--output={bundle}")
  _one_error_line(again, str(bundle), "already exists")
  missing = _run("experiments.export", f"--workdir={tmp_path / 'nowhere'}", f"--output={tmp_path / 'b2'}")
  _one_error_line(missing, "not a training workdir")
