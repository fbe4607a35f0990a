"""Orbax checkpoints: latest/best retention, JSON meta, and restoring onto another mesh."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from d2e2s_jax.training import checkpoints, sharding


def _state(mesh, spec, scale):
  kernel = jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(8, 8) * scale,
                          NamedSharding(mesh, spec))
  return {"params": {"kernel": kernel}, "step": jnp.asarray(int(scale), jnp.int32)}


def test_latest_and_best_and_cross_mesh_restore(tmp_path):
  mesh_a = sharding.make_mesh("fsdp:8")
  ckpt = checkpoints.Checkpoints(tmp_path, keep_latest=2)
  ckpt.save_config({"lr": 1e-5, "dataset": "14res"})
  for step, f1 in [(1, 10.0), (2, 30.0), (3, 20.0)]:
    state = _state(mesh_a, P("fsdp"), step)
    ckpt.save_latest(step, state, {"epoch": step, "best_dev": f1})
    ckpt.save_best(step, state, {"epoch": step}, dev_triplet_f1=f1)
  ckpt.wait()
  assert ckpt.latest_step() == 3
  assert ckpt.best_step() == 2
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints" / "latest").iterdir()
                if p.name.isdigit()) == [2, 3]
  assert json.loads((tmp_path / "checkpoints" / "config.json").read_text())["dataset"] == "14res"
  ckpt.close()

  # A new process on a different mesh layout restores the same values.
  mesh_b = sharding.make_mesh("data:2,tensor:4")
  target = checkpoints.abstract_like(_state(mesh_b, P(None, "tensor"), 1))
  reopened = checkpoints.Checkpoints(tmp_path)
  state, meta = reopened.restore_latest(target)
  assert meta == {"epoch": 3, "best_dev": 20.0}
  assert state["params"]["kernel"].sharding.spec == P(None, "tensor")
  np.testing.assert_array_equal(np.asarray(state["params"]["kernel"]),
                                np.arange(64).reshape(8, 8) * 3)
  best, _ = reopened.restore_best(target)
  assert int(best["step"]) == 2
  reopened.close()


def test_no_checkpoint_returns_none(tmp_path):
  ckpt = checkpoints.Checkpoints(tmp_path)
  assert ckpt.restore_latest({"x": jax.ShapeDtypeStruct((2,), jnp.float32)}) is None
  ckpt.close()
