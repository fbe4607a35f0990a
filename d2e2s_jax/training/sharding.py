"""Device meshes and logical-axis sharding rules (pjit style, with today's `jax.jit`).

The mesh always has the three axes `data`, `fsdp` and `tensor` (size 1 when not asked
for), so one set of logical rules serves every layout:

* the batch is split over `data` and `fsdp` (FSDP is data parallel too);
* encoder parameters (and with them the optimizer state) are split over `fsdp` along
  their `embed` axis, and over `tensor` along `heads`/`mlp`/`vocab` when a tensor axis is
  asked for;
* parameters without logical names (the D2E2S head) are replicated when small and split
  over `fsdp` along their largest divisible dimension when large (`fsdp_fallback`).

A dimension that the mesh axis does not divide evenly is replicated instead of sharded,
so tiny test configs and odd sizes work on any mesh.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or axes; None replicates). `batch` is the leading axis
# of every batch array (`batch_sharding`); the others are the encoder's parameter axes,
# every one of them (see d2e2s_jax/models/deberta_v2.py; tests/test_sharding.py checks that
# the two lists agree, so no rule names an axis that nothing has). Callers may pass other
# rules to `logical_shardings`.
DEFAULT_LOGICAL_AXIS_RULES: Tuple[Tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("input_embed", None),
    ("kv", None),
    ("layers", None),
    ("relpos", None),
    ("positions", None),
    ("token_types", None),
    ("conv_window", None),
    ("conv_in", None),
)


def parse_mesh_spec(spec: Optional[str], num_devices: int) -> dict:
  """Parses "data:4,fsdp:2" into {"data": 4, "fsdp": 2, "tensor": 1}.

  An empty spec puts every device on `data`. One axis may be given as -1 to take the
  remaining devices. A mesh smaller than `num_devices` is allowed (it runs on the first
  devices, e.g. "data:1" for one device); a larger one is an error.
  """
  if not spec:
    return {"data": num_devices, "fsdp": 1, "tensor": 1}
  sizes = {}
  for part in spec.split(","):
    name, sep, size = part.strip().partition(":")
    if not sep or name not in MESH_AXES or name in sizes:
      raise ValueError(f"--mesh={spec!r}: expected comma-separated AXIS:SIZE with AXIS in "
                       f"{MESH_AXES}, each at most once; got {part!r}")
    try:
      sizes[name] = int(size)
    except ValueError:
      raise ValueError(f"--mesh={spec!r}: size of {name!r} is not an integer: {size!r}") from None
    if sizes[name] == 0 or sizes[name] < -1:
      raise ValueError(f"--mesh={spec!r}: size of {name!r} must be positive or -1")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"--mesh={spec!r}: at most one axis may be -1")
  known = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"--mesh={spec!r}: {num_devices} devices are not divisible by {known}")
    sizes[free[0]] = num_devices // known
  for name in MESH_AXES:
    sizes.setdefault(name, 1)
  if math.prod(sizes.values()) > num_devices:
    raise ValueError(f"--mesh={spec!r} needs {math.prod(sizes.values())} devices, "
                     f"but {num_devices} are available")
  return {name: sizes[name] for name in MESH_AXES}


def make_mesh(spec: Optional[str] = None, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) over `devices` (default: all devices).

  Axes are `Auto` so that `with_sharding_constraint` and sharding propagation work as in
  pjit; `jax.make_mesh` would default to Explicit axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh_spec(spec, len(devices))
  shape = tuple(sizes[name] for name in MESH_AXES)
  if math.prod(shape) < len(devices):
    logging.warning("--mesh=%s uses %d of the %d devices", spec, math.prod(shape), len(devices))
    devices = devices[:math.prod(shape)]
  device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Replicates the dimensions of `spec` that the mesh does not divide evenly."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = [axes if dim % _mesh_axis_size(mesh, axes) == 0 else None
            for axes, dim in zip(entries, shape)]
  while fitted and fitted[-1] is None:
    fitted.pop()
  return PartitionSpec(*fitted)


# Arrays without a sharded logical axis but at least this many elements are split over
# `fsdp` along their largest evenly divisible dimension (the D2E2S head's LSTM, GCN and
# fusion kernels: 172M parameters on the xxlarge model, 2.6 GiB per device when replicated
# with their gradients and Adam moments). Small arrays stay replicated.
FSDP_FALLBACK_MIN_ELEMENTS = 1 << 20


def fsdp_fallback(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                  min_elements: Optional[int] = None) -> PartitionSpec:
  """`spec`, or for a large array that `spec` leaves replicated, a split over `fsdp`.

  `min_elements` defaults to the module's FSDP_FALLBACK_MIN_ELEMENTS, read at call time.
  """
  min_elements = FSDP_FALLBACK_MIN_ELEMENTS if min_elements is None else min_elements
  fsdp = mesh.shape["fsdp"]
  if fsdp == 1 or any(axes is not None for axes in spec) or math.prod(shape) < min_elements:
    return spec
  divisible = [dim for dim, size in enumerate(shape) if size % fsdp == 0]
  if not divisible:
    return spec
  dim = max(divisible, key=lambda d: shape[d])
  return PartitionSpec(*([None] * dim), "fsdp")


def logical_shardings(abstract_tree: Any, mesh: Mesh,
                      rules: Sequence[Tuple[str, Any]] = DEFAULT_LOGICAL_AXIS_RULES,
                      fallback_min_elements: Optional[int] = None) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

  `abstract_tree` is typically `jax.eval_shape(init_fn, ...)`: boxed leaves are sharded by
  their logical names and `rules`; other leaves of at least `fallback_min_elements`
  elements are split over `fsdp` (see `fsdp_fallback`); the rest are replicated.
  """
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  unboxed = nn.meta.unbox(abstract_tree)

  def to_sharding(spec, leaf):
    spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
    spec = fit_spec_to_shape(spec, np.shape(leaf), mesh)
    return NamedSharding(mesh, fsdp_fallback(spec, np.shape(leaf), mesh, fallback_min_elements))

  return jax.tree.map(to_sharding, mesh_specs, unboxed,
                      is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def batch_sharding(mesh: Mesh, rules: Sequence[Tuple[str, Any]] = DEFAULT_LOGICAL_AXIS_RULES) -> NamedSharding:
  """Leading axis as the `batch` rule says (data and fsdp by default); the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(dict(rules)["batch"]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def bind_runtime_values(jitted: Any, values: Any, mesh: Mesh, traces: Any) -> Callable[[Any, Any], Any]:
  """`jitted(x, batch, values)` as `step(x, batch)`, with `values` placed replicated once.

  The jitted steps take their runtime hyperparameters (None: none) as a last argument
  so that they are inputs of the compiled program, not constants in it. The returned
  function also has `lower(x, batch)`, `runtime_values` (the compiled program of
  `lower(...).compile()` is called as `(x, batch, step.runtime_values)`) and
  `trace_count()` (`traces[0]`, which the traced function increments).
  """
  values = None if values is None else jax.device_put(values, replicated(mesh))

  def step(x, batch):
    return jitted(x, batch, values)

  step.lower = lambda x, batch: jitted.lower(x, batch, values)
  step.runtime_values = values
  step.trace_count = lambda: traces[0]
  return step


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Places a host batch (flat dict, leading batch axis) on the mesh."""
  sharding = batch_sharding(mesh)
  batch_size = next(iter(batch.values())).shape[0]
  split = _mesh_axis_size(mesh, sharding.spec[0])
  if batch_size % split:
    raise ValueError(f"batch size {batch_size} is not divisible by the {' x '.join(sharding.spec[0])} mesh size "
                     f"{split}")
  return {key: jax.device_put(value, sharding) for key, value in batch.items()}
