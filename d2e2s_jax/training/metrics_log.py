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
  """A 2 x 2 figure of a run's `metrics.jsonl` records against step.

  * the differentiable loss parts, entity CE and sentiment BCE, and their sum (what the
    gradient follows; log scale);
  * the reported total beside its KL part: the total includes kl_weight x the KL term,
    which carries no gradient by default and can hide the learning;
  * dev and test triplet F1;
  * the learning rate.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  records = list(records)
  train = [r for r in records if r["split"] == "train" and "loss" in r]

  def series(rows, value):
    points = []
    for row in rows:
      try:
        points.append((row["step"], value(row)))
      except KeyError:  # a log written before that part was logged
        continue
    return tuple(zip(*points)) if points else ((), ())

  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  parts, total, scores, rate = axes.flat
  for label, value in (("entity", lambda r: r["entity_loss"]), ("sentiment", lambda r: r["sentiment_loss"]),
                       ("entity + sentiment", lambda r: r["entity_loss"] + r["sentiment_loss"])):
    parts.plot(*series(train, value), label=label)
  parts.set_yscale("log")
  parts.set_title("differentiable loss parts")
  total.plot(*series(train, lambda r: r["loss"]), label="reported total", color="tab:gray")
  total.plot(*series(train, lambda r: r["loss"] - r["entity_loss"] - r["sentiment_loss"]),
             label="kl_weight x KL term", color="tab:purple", linestyle="--")
  total.set_title("reported loss (the KL part has no gradient by default)")
  for split, color in (("dev", "tab:green"), ("test", "tab:red")):
    rows = [r for r in records if r["split"] == split and "triplet" in r]
    scores.plot(*series(rows, lambda r: r["triplet"]["f1"]), marker="o", color=color, label=split)
  scores.set_ylabel("triplet F1 (%)")
  scores.set_title("triplet F1")
  rate.plot(*series(train, lambda r: r["learning_rate"]), color="tab:orange")
  rate.set_title("learning rate")
  for axis in axes.flat:
    axis.set_xlabel("step")
    if axis.get_legend_handles_labels()[0]:
      axis.legend(fontsize="small")
  fig.tight_layout()
  fileio.write_atomic(png_path, lambda temporary: fig.savefig(temporary, dpi=100, format="png"), suffix=".png")
  plt.close(fig)
