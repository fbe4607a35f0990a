"""Tests of the raw-data converter: `parsing.convert_file` and `experiments.convert`."""

import json
import pathlib
import subprocess
import sys

import pytest

from d2e2s_jax import parsing
from d2e2s_jax.data import readers, synthetic
from d2e2s_jax.data.examples import DataError, Triplet

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_RAW_LINES = [
    "the pizza was great .####[([1], [3], 'POS')]",
    "the staff  is rude and slow####[([1], [4], 'NEG'), ([1], [6], 'NEG')]",
]


@pytest.fixture(scope="module")
def tiny_parser_dir(tmp_path_factory):
  """A parser trained for a handful of steps on 40 synthetic sentences (seconds)."""
  splits = synthetic.generate_synthetic_splits(seed=2, sizes={"train": 40, "dev": 10})
  output = tmp_path_factory.mktemp("parser") / "tiny"
  parsing.train_parser(splits["train"], splits["dev"], output, seed=0, max_steps=6, eval_frequency=6, width=32,
                       depth=1)
  return output


def _convert(*args):
  return subprocess.run([sys.executable, "-m", "experiments.convert", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120, check=False)


def test_convert_cli_parses_an_aste_v2_file(tiny_parser_dir, tmp_path):
  raw = tmp_path / "train_triplets.txt"
  raw.write_text("\n".join(_RAW_LINES) + "\n", encoding="utf-8")
  output = tmp_path / "out" / "train.json"
  result = _convert(f"--input={raw}", "--input_format=aste_v2", f"--output={output}", f"--parser={tiny_parser_dir}")
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == {"input": str(raw), "output": str(output), "sentences": 2, "skipped": 0}
  converted = readers.read_examples(output, "d2e2s")
  original = readers.read_examples(raw, "aste_v2")
  assert [example.id for example in converted] == ["train_triplets:1", "train_triplets:2"]
  for example, source in zip(converted, original):
    # The words are kept (the empty word between two spaces included) and so are the triplets.
    assert example.tokens == source.tokens and example.triplets == source.triplets
    assert example.has_parse and len(example.heads) == len(example.tokens)
    assert len(example.pos_tags) == len(example.tokens)
  assert converted[1].triplets == (Triplet((1, 2), (4, 5), "NEGATIVE"), Triplet((1, 2), (6, 7), "NEGATIVE"))
  assert sorted(path.name for path in output.parent.iterdir()) == ["train.json"]


def test_convert_cli_names_the_bad_line_and_keeps_the_old_output(tiny_parser_dir, tmp_path):
  raw = tmp_path / "raw.txt"
  raw.write_text(_RAW_LINES[0] + "\nthe food####[([7], [0], 'POS')]\n", encoding="utf-8")
  output = tmp_path / "out.json"
  output.write_text("previous result")
  result = _convert(f"--input={raw}", "--input_format=aste_v2", f"--output={output}", f"--parser={tiny_parser_dir}")
  assert result.returncode == 1
  assert result.stderr.startswith(f"error: {raw}, line 2: triplet 0 aspect") and result.stderr.count("\n") == 1
  assert output.read_text() == "previous result"
  assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json", "raw.txt"]


def test_convert_cli_reports_a_missing_parser(tmp_path):
  raw = tmp_path / "raw.txt"
  raw.write_text("The food was great .\n", encoding="utf-8")
  result = _convert(f"--input={raw}", "--input_format=text", f"--output={tmp_path / 'out.json'}",
                    f"--parser={tmp_path / 'no_parser'}")
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert result.stderr.startswith("error: parser ") and "experiments.train_parser" in result.stderr
  assert not (tmp_path / "out.json").exists()


def test_convert_file_parses_plain_sentences_and_skips_bad_lines(tiny_parser_dir, tmp_path):
  raw = tmp_path / "reviews.txt"
  raw.write_text("The food was great!\n\nthe staff####[]\n  Service is slow.  \n", encoding="utf-8")
  output = tmp_path / "reviews.json"
  with pytest.raises(DataError, match=r"reviews.txt, line 3: .*'####'"):
    parsing.convert_file(raw, "text", output, tiny_parser_dir)
  assert not output.exists()
  nlp = parsing.load_parser(tiny_parser_dir)
  summary = parsing.convert_file(raw, "text", output, nlp, skip_invalid=True)
  assert summary == {"input": str(raw), "output": str(output), "sentences": 2, "skipped": 1}
  converted = readers.read_examples(output, "d2e2s")
  assert [example.id for example in converted] == ["reviews:1", "reviews:4"]
  assert [example.tokens for example in converted] == [("The", "food", "was", "great", "!"),
                                                       ("Service", "is", "slow", ".")]
  assert all(example.has_parse and not example.triplets for example in converted)


def test_convert_file_skips_bad_aste_v2_lines_and_rejects_unknown_formats(tiny_parser_dir, tmp_path):
  raw = tmp_path / "raw.txt"
  raw.write_text(_RAW_LINES[0] + "\nno separator here\n" + _RAW_LINES[1] + "\n", encoding="utf-8")
  summary = parsing.convert_file(raw, "aste_v2", tmp_path / "out.json", tiny_parser_dir, skip_invalid=True)
  assert (summary["sentences"], summary["skipped"]) == (2, 1)
  assert [example.id for example in readers.read_examples(tmp_path / "out.json")] == ["raw:1", "raw:3"]
  with pytest.raises(ValueError, match="unknown input format 'conll'"):
    parsing.convert_file(raw, "conll", tmp_path / "out.json", tiny_parser_dir)
