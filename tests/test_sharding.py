"""Mesh parsing and logical-axis sharding rules on 8 fake CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from d2e2s_jax.training import sharding


def test_eight_fake_devices():
  assert len(jax.devices()) == 8, "tests/conftest.py must set XLA_FLAGS before jax is imported"


@pytest.mark.parametrize("spec,expected", [
    (None, {"data": 8, "fsdp": 1, "tensor": 1}),
    ("data:4,fsdp:2", {"data": 4, "fsdp": 2, "tensor": 1}),
    ("fsdp:8", {"data": 1, "fsdp": 8, "tensor": 1}),
    ("data:-1,tensor:2", {"data": 4, "fsdp": 1, "tensor": 2}),
])
def test_parse_mesh_spec(spec, expected):
  assert sharding.parse_mesh_spec(spec, 8) == expected


@pytest.mark.parametrize("spec,message", [
    ("data:16", "needs 16 devices"),
    ("model:8", "AXIS in"),
    ("data:four", "not an integer"),
    ("data:-1,fsdp:-1", "at most one axis"),
    ("data:4,data:2", "each at most once"),
    ("data:0", "positive"),
])
def test_parse_mesh_spec_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    sharding.parse_mesh_spec(spec, 8)


def test_smaller_mesh_uses_the_first_devices():
  mesh = sharding.make_mesh("data:2")
  assert mesh.devices.size == 2 and list(mesh.devices.flat) == jax.devices()[:2]


class _Tiny(nn.Module):

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal()
    x = nn.Dense(16, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(x)
    x = nn.Dense(6, kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(x)
    return nn.Dense(3, name="head")(x)


@pytest.mark.parametrize("spec,first,second", [
    ("data:4,fsdp:2", P("fsdp", "tensor"), P("tensor", "fsdp")),
    ("fsdp:2,tensor:4", P("fsdp", "tensor"), P("tensor", "fsdp")),
    # 6 is not divisible by fsdp=4: that dimension is replicated.
    ("fsdp:4,tensor:2", P("fsdp", "tensor"), P("tensor")),
])
def test_logical_shardings_place_parameters(spec, first, second):
  model = _Tiny()
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((8, 8))))
  mesh = sharding.make_mesh(spec)
  shardings = sharding.logical_shardings(abstract, mesh)
  assert shardings["params"]["Dense_0"]["kernel"].spec == first
  assert shardings["params"]["Dense_1"]["kernel"].spec == second
  assert shardings["params"]["head"]["kernel"].spec == P()
  # Initialising under those shardings really splits the arrays.
  init = jax.jit(lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((8, 8)))),
                 out_shardings=shardings)
  params = init()
  kernel = params["params"]["Dense_0"]["kernel"]
  assert kernel.sharding.spec == first
  shard_shape = kernel.addressable_shards[0].data.shape
  assert shard_shape == (8 // mesh.shape["fsdp"], 16 // mesh.shape["tensor"])


def test_shard_batch_splits_leading_axis():
  mesh = sharding.make_mesh("data:4,fsdp:2")
  batch = {"input_ids": np.arange(16 * 5, dtype=np.int32).reshape(16, 5)}
  placed = sharding.shard_batch(batch, mesh)
  assert placed["input_ids"].addressable_shards[0].data.shape == (2, 5)
  np.testing.assert_array_equal(np.asarray(placed["input_ids"]), batch["input_ids"])
  with pytest.raises(ValueError, match="not divisible"):
    sharding.shard_batch({"x": np.zeros((6, 2))}, mesh)


@pytest.mark.parametrize("spec,expected", [
    ("fsdp:2", P("fsdp")),   # 6 rows split in two
    ("fsdp:4", P()),         # neither 6 nor 3 divisible by 4: replicated
    ("data:8", P()),         # no fsdp axis: replicated
])
def test_large_unnamed_arrays_fall_back_to_fsdp(spec, expected):
  model = _Tiny()
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((8, 8))))
  mesh = sharding.make_mesh(spec)
  shardings = sharding.logical_shardings(abstract, mesh, fallback_min_elements=16)
  assert shardings["params"]["head"]["kernel"].spec == expected
  assert shardings["params"]["head"]["bias"].spec == P()  # 3 elements: below the threshold
  # Logically named arrays keep their rules.
  assert "fsdp" in str(shardings["params"]["Dense_0"]["kernel"].spec) or mesh.shape["fsdp"] == 1


def test_default_rules_name_exactly_the_axes_the_encoder_has():
  """Every encoder parameter axis has a rule, and every rule but `batch` names one of them
  (over all config variants of the parity tests)."""
  from d2e2s_jax.models import deberta_v2  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.models.deberta_v2_config import DebertaV2Config  # pylint: disable=import-outside-toplevel
  from tests import test_deberta_v2  # pylint: disable=import-outside-toplevel

  used = set()
  for variant in test_deberta_v2.VARIANTS.values():
    config = DebertaV2Config(**{**test_deberta_v2.BASE, **variant})
    specs = nn.get_partition_spec(deberta_v2.abstract_params(deberta_v2.DebertaV2Model(config)))
    for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)):
      used.update(axis for axis in spec if axis is not None)
  rules = dict(sharding.DEFAULT_LOGICAL_AXIS_RULES)
  assert used == set(rules) - {"batch"}
  assert sharding.batch_sharding(sharding.make_mesh("data:4,fsdp:2")).spec == P(rules["batch"])
