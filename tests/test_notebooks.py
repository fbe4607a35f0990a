"""The Colab notebooks run top to bottom in smoke mode (D2E2S_SMOKE=1: CPU, toy sizes, offline)."""

import json
import pathlib

import pytest

from tests.test_inference import biased_bundle, parser_dir, tiny_run  # noqa: F401  # shared fixtures

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "experiments" / "colab"


def _execute(name, monkeypatch, timeout_s, **env):
  """Runs a notebook in a fresh python3 kernel (which inherits this environment)."""
  monkeypatch.setenv("D2E2S_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for key, value in env.items():
    monkeypatch.setenv(key, str(value))
  notebook = nbformat.read(COLAB / name, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                                   resources={"metadata": {"path": str(COLAB)}})
  client.execute()
  return notebook


def _text_outputs(notebook):
  texts = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      if output.get("output_type") == "stream":
        texts.append(output["text"])
      elif "data" in output and "text/plain" in output["data"]:
        texts.append(output["data"]["text/plain"])
  return "".join(texts)


def _has_png(notebook):
  return any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["train_tpu.ipynb", "predict.ipynb"])
def test_notebooks_are_plain_and_commented(name):
  notebook = json.loads((COLAB / name).read_text())
  code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
  assert code and all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code)
  for cell in code:
    source = "".join(cell["source"])
    assert "#" in source, f"{name}: uncommented cell:\n{source}"
    assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), "no shell magics"


def test_predict_notebook_smoke(biased_bundle, monkeypatch):  # noqa: F811
  notebook = _execute("predict.ipynb", monkeypatch, 300, D2E2S_MODEL=biased_bundle)
  text = _text_outputs(notebook)
  assert "parser: yes" in text  # the bundle's parser, so raw text was predicted
  assert "The pizza was delicious but the waiter was rude ." in text
  assert "POSITIVE" in text  # the biased model pairs every kept span


@pytest.mark.slow
def test_train_notebook_smoke(monkeypatch, tmp_path):
  workdir = tmp_path / "run"
  notebook = _execute("train_tpu.ipynb", monkeypatch, 900, D2E2S_WORKDIR=workdir)
  text = _text_outputs(notebook)
  assert "best dev step" in text and "test   triplet" in text
  assert _has_png(notebook)  # curves.png shown
  results = json.loads((workdir / "results.json").read_text())
  assert results["total_steps"] == 2
  assert (tmp_path / "run_bundle" / "bundle.json").is_file()
