"""Orbax checkpoints: the latest ones for exact resume, the best-by-dev one for evaluation.

Layout under `<workdir>/checkpoints/`:

* `latest/<step>/` - the newest `keep_latest` training states (parameters, optimizer
  state, step, RNG, skip counters) with a JSON `meta` item (epoch, best dev score so far);
  a run restarted with the same flags resumes from the newest complete one.
* `best/<step>/` - the state with the highest dev triplet F1 (one kept).
* `config.json` and `tokenizer/` - what is needed to rebuild the model, so a checkpoint
  directory is self-describing.

Saves are asynchronous; Orbax writes each step to a temporary directory and renames it
when complete, so a process killed mid-save leaves the previous checkpoint intact.
Restoring takes an abstract target whose leaves carry shardings, so a checkpoint written
on one mesh restores onto another.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from d2e2s_jax import fileio


def _manager(directory: pathlib.Path, max_to_keep: int, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      best_fn=(lambda metrics: metrics["dev_triplet_f1"]) if best else None,
      best_mode="max",
      keep_checkpoints_without_metrics=not best,
      create=True,
  )
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


class Checkpoints:
  """The two checkpoint managers of a training run."""

  def __init__(self, workdir: os.PathLike, keep_latest: int = 2):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.directory.mkdir(parents=True, exist_ok=True)
    self._latest = _manager(self.directory / "latest", keep_latest, best=False)
    self._best = _manager(self.directory / "best", 1, best=True)

  def save_config(self, config: Mapping[str, Any], tokenizer: Any = None) -> None:
    """Writes the run's config (and tokenizer) beside the checkpoints."""
    fileio.write_json_atomic(self.directory / "config.json", config)
    if tokenizer is not None:
      tokenizer.save_pretrained(str(self.directory / "tokenizer"))

  def save_latest(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    self._latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))))

  def save_best(self, step: int, state: Any, meta: Mapping[str, Any], dev_triplet_f1: float) -> None:
    self._best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
                    metrics={"dev_triplet_f1": float(dev_triplet_f1)})

  def latest_step(self) -> Optional[int]:
    return self._latest.latest_step()

  def best_step(self) -> Optional[int]:
    return self._best.best_step()

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[Any, dict]]:
    """The newest complete training state, placed as `abstract_state` says, or None."""
    step = self._latest.latest_step()
    return None if step is None else _restore(self._latest, step, abstract_state)

  def restore_best(self, abstract_state: Any) -> Optional[Tuple[Any, dict]]:
    step = self._best.best_step()
    return None if step is None else _restore(self._best, step, abstract_state)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, as a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Tuple[Any, dict]:
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["meta"])
