"""Run logs: `metrics.jsonl`, TensorBoard event files and `curves.png`.

`metrics.jsonl` holds one JSON object per line with at least `step` and `split`
(train/dev/test). Train lines carry `loss` and `learning_rate`; eval lines carry the
scorer's triplet/aspect/opinion precision, recall and F1. A resumed run first drops the
lines written after the checkpoint it resumes from, so an interrupted and an
uninterrupted run end with the same file.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Optional

from d2e2s_jax import fileio


def _flatten(prefix: str, value: Any, out: Dict[str, float]) -> None:
  if isinstance(value, Mapping):
    for key, sub in value.items():
      _flatten(f"{prefix}/{key}" if prefix else str(key), sub, out)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    out[prefix] = float(value)


class MetricsLog:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: os.PathLike, resume_step: Optional[int] = None,
               tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is None:
      self.path.write_text("")
    else:
      kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
      fileio.write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    self._writer = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    record = {"step": int(step), "split": split, **metrics}
    with self.path.open("a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
    if self._writer is not None:
      scalars: Dict[str, float] = {}
      _flatten(split, metrics, scalars)
      for tag, value in scalars.items():
        if math.isfinite(value):
          self._writer.add_scalar(tag, value, int(step))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def read_metrics(path: os.PathLike) -> List[dict]:
  """All records of a metrics.jsonl file (an absent file has none)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: Iterable[Mapping[str, Any]], png_path: os.PathLike) -> None:
  """Training loss and dev triplet F1 against step, side by side."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  records = list(records)
  train = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and "loss" in r]
  dev = [(r["step"], r["triplet"]["f1"]) for r in records
         if r["split"] == "dev" and "triplet" in r]
  fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
  if train:
    ax_loss.plot(*zip(*train), color="tab:blue")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("training loss")
  ax_loss.set_title("loss")
  if dev:
    ax_f1.plot(*zip(*dev), marker="o", color="tab:green")
  ax_f1.set_xlabel("step")
  ax_f1.set_ylabel("dev triplet F1 (%)")
  ax_f1.set_title("dev triplet F1")
  fig.tight_layout()
  fig.savefig(str(png_path), dpi=100)
  plt.close(fig)
