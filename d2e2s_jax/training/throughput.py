"""Model FLOPs of the D2E2S step and device peaks: tokens/s and model FLOPs utilisation.

The FLOPs model (`analytic_flops`) counts model FLOPs, without rematerialisation and
without the optimizer:

* forward = 2 * (dense parameters) * B*T [every kernel applied once per token: attention
  and FFN projections, the conv layer, the head's LSTMs, GCN and fusion layers; the span
  and pair classifiers once per span / pair]
* + 4 * L * B * T^2 * d [content scores and probabilities x values]
* + per relative term (c2p, p2c) 2 * L * B * T * R * d [scores against the R reachable
  relative rows, R = 2T - 1 capped at 2 * position buckets]
* + 2 * L * R * d^2 per term [projecting those rows];
* a training step is 3x forward.

Not counted: embedding lookups, the head's [T, T] graph products and attention (< 1 % at
xxlarge), elementwise work. For one unscanned encoder layer (width 512, T = 128, 256
buckets) it is within 2 % of XLA's count, forward and forward + backward
(tests/test_throughput.py checks a smaller one). XLA's own count (`compiled_flops`)
includes the recomputation and the optimizer, but XLA's HLO cost analysis counts a while
loop's body once, so with the encoder's layers under `nn.scan` (and the LSTMs' time
steps under `lax.scan`) it misses most of the work (jax 0.10.2 CPU: 2 and 4 layers count
alike): it is no substitute for this model.

The dense parameters are the kernels of the parameter tree (`dense_parameter_counts`:
names ending in "kernel"; embeddings, biases and norms are not matmuls per token), split
into those applied per token, per span (`entity_classifier`) and per pair
(`senti_classifier`). Given only a `D2E2SConfig`, they are read from the abstract
initialisation of the model (`jax.eval_shape`, nothing is materialised; cached per
config).

Peaks (`PEAK_TFLOPS`, `find_peak`): dense (no sparsity) peak TFLOP/s by device kind.
bfloat16 compute uses the bf16 tensor-core peak; float32 compute the TF32 one when JAX's
default matmul precision lets XLA use TF32 (its default on NVIDIA GPUs), else the plain
float32 one (`matmul_precision_class`). Unknown devices (the CPU) have no peak: the
utilisation is then None.

In a training loop:

  flops = throughput.batch_flops(model_config, batch)          # once per batch shape
  peak = throughput.peak_flops_per_s(jax.devices()[0], model_config.dtype)
  mfu = throughput.utilisation(flops, seconds_per_step, peak)  # None on the CPU
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Dict, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from d2e2s_jax.models import d2e2s, deberta_v2
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config

# Dense (no sparsity) peak TFLOP/s per device: (lower-cased substring of device_kind,
# {"bfloat16", "tf32", "float32"}). First match wins, so specific names come first.
# TPUs run float32 matmuls at default precision as one bfloat16 pass.
PEAK_TFLOPS = (
    ("gh200", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
    ("h200", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
    ("h100 pcie", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0}),
    ("h100", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
    ("h800", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
    ("b200", {"bfloat16": 2250.0, "tf32": 1100.0, "float32": 75.0}),
    ("a100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
    ("l4", {"bfloat16": 121.0, "tf32": 60.0, "float32": 30.0}),
    ("tpu v6", {"bfloat16": 918.0, "tf32": 918.0}),
    ("tpu v5 lite", {"bfloat16": 197.0, "tf32": 197.0}),
    ("tpu v5e", {"bfloat16": 197.0, "tf32": 197.0}),
    ("tpu v5", {"bfloat16": 459.0, "tf32": 459.0}),
    ("tpu v4", {"bfloat16": 275.0, "tf32": 275.0}),
)

# A batch of one sentence: enough for the parameter shapes, which do not depend on T, S, P, E.
_INIT_SHAPES = {
    "input_ids": ((1, 8), jnp.int32), "attention_mask": ((1, 8), jnp.int32),
    "span_token_bounds": ((1, 1, 2), jnp.int32), "span_word_bounds": ((1, 1, 2), jnp.int32),
    "span_sizes": ((1, 1), jnp.int32), "span_mask": ((1, 1), jnp.bool_), "span_labels": ((1, 1), jnp.int32),
    "pair_indices": ((1, 1, 2), jnp.int32), "pair_mask": ((1, 1), jnp.bool_),
    "pair_labels": ((1, 1, 4), jnp.float32), "graph_senders": ((1, 8), jnp.int32),
    "graph_receivers": ((1, 8), jnp.int32), "graph_edge_mask": ((1, 8), jnp.bool_),
    "example_index": ((1,), jnp.int32), "example_mask": ((1,), jnp.bool_),
}


# ----------------------------------------------------------------------------- FLOPs


def dense_parameter_counts(params: Any) -> Dict[str, int]:
  """The kernel parameters applied once per token, per span and per pair.

  Args:
    params: a parameter tree (arrays or `jax.ShapeDtypeStruct`s, boxed or not): the
      full model's, the encoder's or the head's.

  Returns:
    {"per_token": ..., "per_span": ..., "per_pair": ...}.
  """
  counts = {"per_token": 0, "per_span": 0, "per_pair": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]:
    names = [str(getattr(key, "key", getattr(key, "name", key))) for key in path]
    if not names[-1].endswith("kernel"):
      continue  # embeddings, biases, norms
    size = int(np.prod(np.shape(leaf)))
    if "entity_classifier" in names:
      counts["per_span"] += size
    elif "senti_classifier" in names:
      counts["per_pair"] += size
    else:
      counts["per_token"] += size
  return counts


@functools.lru_cache(maxsize=32)
def _config_dense_counts(model_config: d2e2s.D2E2SConfig) -> Dict[str, int]:
  batch = {key: jax.ShapeDtypeStruct(shape, dtype) for key, (shape, dtype) in _INIT_SHAPES.items()}
  model = d2e2s.D2E2S(model_config)
  abstract = jax.eval_shape(lambda b: d2e2s.init_params(model, b, jax.random.key(0)), batch)
  return dense_parameter_counts(abstract)


def model_dense_parameter_counts(model_config: d2e2s.D2E2SConfig) -> Dict[str, int]:
  """`dense_parameter_counts` of the full model a config describes (abstract init, cached).

  Args:
    model_config: a `D2E2SConfig` whose `encoder` is set.
  """
  return dict(_config_dense_counts(model_config))


@functools.lru_cache(maxsize=64)
def _relative_rows(length: int, att_span: int, position_buckets: int, relative_range: int) -> int:
  return deberta_v2.relative_position_tables(length, att_span, position_buckets, relative_range)[3]


def analytic_flops(encoder_config: DebertaV2Config, dense: Mapping[str, int], batch_size: int, seq_len: int,
                   num_spans: int = 0, num_pairs: int = 0, training: bool = True) -> float:
  """Model FLOPs of one forward pass (x3 with `training`); the model is the module docstring's.

  Args:
    encoder_config: the encoder's architecture (L, d, the relative attention).
    dense: `dense_parameter_counts` of the parameters that run (the encoder's alone, or
      the full model's); "per_span" and "per_pair" default to 0.
    batch_size: B.
    seq_len: T, padded sub-tokens per sentence.
    num_spans: S, span candidates per sentence.
    num_pairs: P, pairs per sentence.
    training: a training step (forward + backward, 3x forward) rather than a forward.
  """
  d, layers = encoder_config.hidden_size, encoder_config.num_hidden_layers
  batch, length, spans, pairs = batch_size, seq_len, num_spans, num_pairs
  forward = 2.0 * dense["per_token"] * batch * length
  forward += 2.0 * dense.get("per_span", 0) * batch * spans + 2.0 * dense.get("per_pair", 0) * batch * pairs
  forward += 4.0 * layers * batch * length * length * d
  if encoder_config.relative_attention:
    rows = _relative_rows(length, encoder_config.att_span, encoder_config.position_buckets,
                          encoder_config.relative_range)
    terms = sum(1 for term in ("c2p", "p2c") if term in encoder_config.pos_att_type)
    forward += terms * (2.0 * layers * batch * length * rows * d + 2.0 * layers * rows * d * d)
  return forward * (3.0 if training else 1.0)


def forward_flops(model_config: d2e2s.D2E2SConfig, batch_size: int, seq_len: int, num_spans: int = 0,
                  num_pairs: int = 0, params: Any = None) -> float:
  """Model FLOPs of one forward pass of the full D2E2S model (encoder + head).

  Args:
    model_config: a `D2E2SConfig` whose `encoder` is set.
    batch_size, seq_len, num_spans, num_pairs: B, T, S, P of the batch.
    params: the model's parameters, if at hand (their shapes only; saves the abstract
      initialisation).
  """
  dense = dense_parameter_counts(params) if params is not None else model_dense_parameter_counts(model_config)
  return analytic_flops(model_config.encoder, dense, batch_size, seq_len, num_spans, num_pairs, training=False)


def train_step_flops(model_config: d2e2s.D2E2SConfig, batch_size: int, seq_len: int, num_spans: int,
                     num_pairs: int, params: Any = None) -> float:
  """Model FLOPs of one training step (3x `forward_flops`; no recomputation, no optimizer)."""
  return 3.0 * forward_flops(model_config, batch_size, seq_len, num_spans, num_pairs, params)


def batch_flops(model_config: d2e2s.D2E2SConfig, batch: Mapping[str, Any], training: bool = True,
                params: Any = None) -> float:
  """`train_step_flops` (or with `training=False`, `forward_flops`) of a contract batch.

  B and T come from `input_ids` [B, T], S from `span_mask` [B, S], P from `pair_mask`
  [B, P]; an evaluation batch has no pairs, so P is 0 there (the decoded pairs' classifier
  is not counted: it is a tiny share).
  """
  batch_size, seq_len = np.shape(batch["input_ids"])
  num_spans = np.shape(batch["span_mask"])[1]
  num_pairs = np.shape(batch["pair_mask"])[1] if "pair_mask" in batch else 0
  function = train_step_flops if training else forward_flops
  return function(model_config, int(batch_size), int(seq_len), int(num_spans), int(num_pairs), params)


def compiled_flops(compiled: Any) -> Optional[float]:
  """XLA's FLOP count of a compiled program (`jax.jit(f).lower(...).compile()`), or None.

  `cost_analysis()` returns a dict or a list of them depending on the jax version; see
  the module docstring for what the count misses.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


# ----------------------------------------------------------------------------- peaks


@dataclasses.dataclass(frozen=True)
class Peak:
  """A device's peak for one compute dtype.

  Attributes:
    tflops: dense peak TFLOP/s.
    matmul_class: "bfloat16", "tf32" or "float32" (`matmul_precision_class`).
    table_key: the `PEAK_TFLOPS` entry that matched the device kind.
  """

  tflops: float
  matmul_class: str
  table_key: str

  @property
  def flops_per_s(self) -> float:
    return self.tflops * 1e12


def matmul_precision_class(dtype: str) -> str:
  """Which peak a compute dtype name reaches: "bfloat16", "tf32" or "float32".

  float32 reaches the TF32 peak unless `jax_default_matmul_precision` asks for full
  float32 ("highest").
  """
  if dtype == "bfloat16":
    return "bfloat16"
  precision = str(getattr(jax.config, "jax_default_matmul_precision", None) or "default").lower()
  return "float32" if precision in ("highest", "float32", "f32_f32_f32") else "tf32"


def find_peak(device: Union[jax.Device, str], dtype: str) -> Optional[Peak]:
  """The `PEAK_TFLOPS` entry of a device (or its `device_kind`) for a compute dtype, or None."""
  device_kind = device if isinstance(device, str) else device.device_kind
  kind = matmul_precision_class(dtype)
  lowered = device_kind.lower()
  for name, peaks in PEAK_TFLOPS:
    if name in lowered and kind in peaks:
      return Peak(peaks[kind], kind, name)
  return None


def peak_flops_per_s(device: Union[jax.Device, str], dtype: str) -> Optional[float]:
  """Dense peak FLOP/s of a device (or its `device_kind`) for a compute dtype; None if unknown (CPU)."""
  peak = find_peak(device, dtype)
  return None if peak is None else peak.flops_per_s


def utilisation(flops_per_step: float, seconds_per_step: float, peak: Optional[float]) -> Optional[float]:
  """Model FLOPs utilisation: achieved FLOP/s over `peak` FLOP/s; None without a peak or a time."""
  if peak is None or peak <= 0 or not seconds_per_step > 0:
    return None
  return flops_per_step / seconds_per_step / peak


# What `Meter.read` returns (and the trainer logs to metrics.jsonl): wall-clock rates.
RATE_KEYS = ("steps_per_s", "tokens_per_s", "model_flops_utilization")


class Meter:
  """Training throughput between two reads: real tokens/s and model FLOPs utilisation.

  `add(batch)` after each step counts the batch's real sub-tokens (`attention_mask`) and
  its step FLOPs (`batch_flops`, computed once per batch shape); `read()` returns the
  rates since the previous read (or `restart`) and starts a new interval. Time spent
  outside training steps (evaluation, checkpoints) is left out by calling `restart`
  after it. The utilisation is over all the mesh's devices and None where their peak is
  unknown (the CPU); the FLOPs are those of the padded shapes the device computes.

  Args:
    model_config: the trained model's config.
    devices: the devices the step runs on (e.g. `mesh.devices.flat`).
    clock: seconds, monotonic (tests pass a fake one).
  """

  def __init__(self, model_config: d2e2s.D2E2SConfig, devices: Any, clock: Any = None):
    devices = list(devices)
    self._model_config = model_config
    peak = peak_flops_per_s(devices[0], model_config.dtype) if devices else None
    self._peak = None if peak is None else peak * len(devices)
    self._clock = clock or time.perf_counter
    self._flops_by_shape: Dict[tuple, float] = {}
    self.restart()

  def restart(self) -> None:
    """Starts a new interval now, forgetting what was added since the last read."""
    self._start, self._steps, self._tokens, self._flops = self._clock(), 0, 0, 0.0

  def add(self, batch: Mapping[str, Any]) -> None:
    """Counts one training step on `batch` (numpy arrays of the batch contract)."""
    shape = tuple(np.shape(batch[key]) for key in ("input_ids", "span_mask", "pair_mask") if key in batch)
    if shape not in self._flops_by_shape:
      self._flops_by_shape[shape] = batch_flops(self._model_config, batch)
    self._steps += 1
    self._tokens += int(np.sum(batch["attention_mask"]))
    self._flops += self._flops_by_shape[shape]

  def read(self) -> Dict[str, Optional[float]]:
    """`steps_per_s`, `tokens_per_s` and `model_flops_utilization` (None without a peak)."""
    seconds = max(self._clock() - self._start, 1e-9)
    rates = dict(zip(RATE_KEYS, (self._steps / seconds, self._tokens / seconds,
                                 utilisation(self._flops, seconds, self._peak))))
    self.restart()
    return rates


# jax.monitoring's duration events of the three parts of a compilation: tracing to a
# jaxpr, lowering to StableHLO, and the backend compiler (or, on a persistent-cache hit,
# reading the executable from the cache).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "persistent_cache_hits",
                 "/jax/compilation_cache/cache_misses": "persistent_cache_misses"}
_compile_totals = {"seconds": 0.0, "persistent_cache_hits": 0, "persistent_cache_misses": 0}


@functools.lru_cache(maxsize=None)
def _listen_to_compilations() -> None:
  """Registers the process-wide listeners once (jax.monitoring cannot unregister them)."""

  def on_duration(event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
      _compile_totals["seconds"] += seconds

  def on_event(event: str, **_) -> None:
    if event in _CACHE_EVENTS:
      _compile_totals[_CACHE_EVENTS[event]] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)


class CompileClock:
  """Compilation time and persistent-cache use in this process since the clock started.

  `read()` returns `seconds` (tracing + lowering + compiling, or reading a cached
  executable, of every jitted program in the process), `persistent_cache_hits` and
  `persistent_cache_misses` (0 and 0 without `jax_compilation_cache_dir`, or for
  programs under `jax_persistent_cache_min_compile_time_secs`).
  """

  def __init__(self):
    _listen_to_compilations()
    self._start = dict(_compile_totals)

  def read(self) -> Dict[str, float]:
    """The totals since the clock started (seconds rounded to 0.1 ms)."""
    delta = {key: value - self._start[key] for key, value in _compile_totals.items()}
    delta["seconds"] = round(delta["seconds"], 4)
    return delta
