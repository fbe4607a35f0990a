"""Conversion between `transformers` DeBERTa-v2 state dicts and the Flax parameter tree.

The Flax modules carry the PyTorch attribute names, so a Flax leaf path maps to a HF key
by a few generic rules:

* path separators become dots; `encoder/layer_0/...` is HF layer 0 and the scanned
  `encoder/layer/...` (stacked on a leading axis) holds HF layers 1..N-1;
* `kernel` <- `weight` transposed (PyTorch Linear is [out, in]), then reshaped to the Flax
  kernel's split-head shape; `scale` <- LayerNorm `weight`; `embedding` <- Embedding
  `weight`; `bias` <- `bias`, reshaped to split heads where needed;

and two named exceptions: the attention output projection `attention/output/dense`,
whose Flax kernel has two input axes (heads, head width), and the convolution kernel
`encoder/conv/conv`, PyTorch Conv1d [out, in/groups, window] <-> Flax [window, in/groups, out].

The import fails loudly: every Flax parameter must come from a key of the right shape
(else `ConversionError` naming the missing or mis-shaped key) and every key must be used,
except keys that are known not to belong to the encoder (task heads of
`DebertaV2For*` checkpoints, HF's `position_ids` buffer, and the absolute position table
that `transformers` itself ignores when `position_biased_input` is false), which are
listed in `IGNORED_KEYS` and can be extended per call. A `deberta.` prefix is accepted.

Files: `read_state_dict` reads a HF model directory (safetensors, sharded or not, bfloat16
included, or `pytorch_model.bin`); `read_pretrained` resolves a directory or hub name and
returns its config and numpy parameters (nothing placed on a device); `load_pretrained`
and `save_pretrained` are the (model, params) round trip that `transformers` reads too.

`to_numpy` is the one conversion of torch tensors to numpy in the package.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from d2e2s_jax.models import deberta_v2, deberta_v2_hub
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config

ENCODER_PREFIX = "deberta."
# Regexes over full checkpoint keys that do not belong to the encoder. Heads of the
# `DebertaV2For*` classes and of Microsoft's original checkpoints (lm_predictions,
# mask_predictions), and the `position_ids` buffer that older checkpoints serialised.
IGNORED_KEYS = (
    r"^(lm_predictions|mask_predictions|cls|lm_head|pooler|classifier|qa_outputs)\.",
    r"^(deberta\.)?embeddings\.position_ids$",
)
# `transformers`' `_keys_to_ignore_on_load_unexpected`: released checkpoints without
# absolute positions still ship the table.
_UNUSED_POSITION_TABLE = r"^(deberta\.)?embeddings\.position_embeddings\.weight$"
# Kernels with more than one input axis (the attention output merges heads x head width).
_KERNEL_INPUT_AXES = {"attention.output.dense": 2}
_CONV_KERNEL = "encoder.conv.conv"


class ConversionError(ValueError):
  """A checkpoint does not match the configured encoder. The message names the key."""


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any device, bf16 included), JAX or numpy array as a numpy array."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _flatten(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
  out = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (name,)))
    else:
      out[prefix + (name,)] = value
  return out


def _unflatten(flat: Mapping[Tuple[str, ...], Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _module_and_leaf(path: Tuple[str, ...]) -> Tuple[str, str]:
  """('encoder', 'layer', 'attention', 'self', 'query_proj', 'kernel') -> module path, leaf."""
  return ".".join(path[:-1]), path[-1]


def _hf_suffix(module: str, leaf: str) -> str:
  hf_leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
  return f"{module}.{hf_leaf}"


def _layer_keys(module: str, leaf: str, num_layers: int):
  """HF keys of one Flax leaf: one key, or one per scanned layer (1..N-1)."""
  if module.startswith("encoder.layer_0."):
    return [_hf_suffix("encoder.layer.0." + module[len("encoder.layer_0."):], leaf)]
  if module.startswith("encoder.layer."):
    inner = module[len("encoder.layer."):]
    return [_hf_suffix(f"encoder.layer.{i}.{inner}", leaf) for i in range(1, num_layers)]
  return [_hf_suffix(module, leaf)]


def _kernel_input_axes(module: str) -> int:
  return next((n for suffix, n in _KERNEL_INPUT_AXES.items() if module.endswith(suffix)), 1)


def _hf_shape(module: str, leaf: str, flax_shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """The PyTorch shape of one (unstacked) Flax parameter."""
  if leaf == "kernel":
    if module == _CONV_KERNEL:
      return tuple(reversed(flax_shape))
    n_in = _kernel_input_axes(module)
    return (int(np.prod(flax_shape[n_in:])), int(np.prod(flax_shape[:n_in])))
  if leaf == "bias":
    return (int(np.prod(flax_shape)),)
  return tuple(flax_shape)


def _hf_to_flax_value(module: str, leaf: str, value: np.ndarray, flax_shape: Tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel":
    if module == _CONV_KERNEL:
      return np.transpose(value, (2, 1, 0))
    return np.ascontiguousarray(value.T).reshape(flax_shape)
  return value.reshape(flax_shape)


def _flax_to_hf_value(module: str, leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    if module == _CONV_KERNEL:
      return np.ascontiguousarray(np.transpose(value, (2, 1, 0)))
    n_in = _kernel_input_axes(module)
    return np.ascontiguousarray(value.reshape(int(np.prod(value.shape[:n_in])), -1).T)
  if leaf == "bias":
    return value.reshape(-1)
  return value


def expected_param_shapes(config: DebertaV2Config) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flat {Flax path: shape} of the encoder's parameters (nothing is allocated)."""
  abstract = nn.unbox(deberta_v2.abstract_params(deberta_v2.DebertaV2Model(config)))
  return {path: tuple(leaf.shape) for path, leaf in _flatten(abstract).items()}


def _strip_prefix(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str]]:
  """Keys without the `deberta.` prefix (when the checkpoint uses it), and their originals."""
  prefixed = any(k.startswith(ENCODER_PREFIX) for k in state_dict)
  stripped, original = {}, {}
  for key, value in state_dict.items():
    # LayerNorm gamma/beta are the names of checkpoints older than `transformers` 4.
    short = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    if prefixed and short.startswith(ENCODER_PREFIX):
      short = short[len(ENCODER_PREFIX):]
    stripped[short] = value
    original[short] = key
  return stripped, original


def hf_to_flax(state_dict: Mapping[str, Any], config: DebertaV2Config,
               ignore: Iterable[str] = ()) -> Dict[str, Any]:
  """Converts a `transformers` DeBERTa-v2 state dict to Flax params (nested dict of numpy).

  Args:
    state_dict: key -> torch tensor or numpy array, from `DebertaV2Model` or any
      `DebertaV2For*` model (keys under `deberta.`).
    config: the encoder configuration the checkpoint belongs to.
    ignore: extra regexes of checkpoint keys to skip, on top of IGNORED_KEYS.

  Raises:
    ConversionError: a parameter's key is missing, has the wrong shape, or a key of the
      checkpoint is used by no parameter; the message names the key.
  """
  ignored = [re.compile(p) for p in (*IGNORED_KEYS, *ignore)]
  if not config.position_biased_input:
    ignored.append(re.compile(_UNUSED_POSITION_TABLE))
  stripped, original = _strip_prefix(state_dict)
  unused = set(stripped)
  flat = {}
  for path, shape in expected_param_shapes(config).items():
    module, leaf = _module_and_leaf(path)
    keys = _layer_keys(module, leaf, config.num_hidden_layers)
    stacked = module.startswith("encoder.layer.")
    one_shape = shape[1:] if stacked else shape
    values = []
    for key in keys:
      if key not in stripped:
        raise ConversionError(f"checkpoint has no key {key!r} (for Flax parameter {'/'.join(path)})")
      value = to_numpy(stripped[key])
      want = _hf_shape(module, leaf, one_shape)
      if value.shape != want:
        raise ConversionError(f"checkpoint key {original[key]!r} has shape {value.shape}, expected {want}")
      values.append(_hf_to_flax_value(module, leaf, value.astype(np.float32), one_shape))
      unused.discard(key)
    flat[path] = np.stack(values) if stacked else values[0]
  unmapped = sorted(original[k] for k in unused if not any(p.search(original[k]) for p in ignored))
  if unmapped:
    raise ConversionError(f"checkpoint keys used by no encoder parameter: {', '.join(map(repr, unmapped))}")
  return _unflatten(flat)


def flax_to_hf(params: Mapping[str, Any], config: DebertaV2Config, prefix: str = "") -> Dict[str, np.ndarray]:
  """Converts Flax params to a `DebertaV2Model` state dict of float32 numpy arrays.

  Args:
    params: the encoder's parameter tree (boxed or not).
    config: its configuration.
    prefix: put before every key ("deberta." for a `DebertaV2For*` state dict).

  Raises:
    ConversionError: a parameter is missing, extra or mis-shaped for `config`.
  """
  flat = _flatten(nn.unbox(params))
  expected = expected_param_shapes(config)
  extra = sorted("/".join(p) for p in set(flat) - set(expected))
  if extra:
    raise ConversionError(f"Flax parameters not in a DeBERTa encoder: {', '.join(extra)}")
  out = {}
  for path, shape in expected.items():
    name = "/".join(path)
    if path not in flat:
      raise ConversionError(f"Flax parameter {name} is missing")
    value = np.asarray(flat[path], dtype=np.float32)
    if value.shape != shape:
      raise ConversionError(f"Flax parameter {name} has shape {value.shape}, expected {shape}")
    module, leaf = _module_and_leaf(path)
    keys = _layer_keys(module, leaf, config.num_hidden_layers)
    slices = list(value) if module.startswith("encoder.layer.") else [value]
    for key, one in zip(keys, slices):
      out[prefix + key] = _flax_to_hf_value(module, leaf, one)
  return out


# ----------------------------------------------------------------------------------------
# Files.

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Reads a safetensors file into numpy arrays, bfloat16 included.

  safetensors' numpy API refuses bfloat16 (numpy has no such type), so for those files
  the (simple, documented) layout is read directly: an 8-byte little-endian header size,
  a JSON header of {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
  """
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return load_file(path)
  except TypeError:
    pass
  import ml_dtypes  # pylint: disable=import-outside-toplevel  # ships with jax
  dtypes = {**_SAFETENSORS_DTYPES, "BF16": ml_dtypes.bfloat16}
  with open(path, "rb") as f:
    header_size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_size))
    data = f.read()
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in dtypes:
      raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
    begin, end = entry["data_offsets"]
    out[name] = np.frombuffer(data[begin:end], dtype=np.dtype(dtypes[entry["dtype"]]).newbyteorder("<")).reshape(
        entry["shape"])
  return out


def read_state_dict(directory: str) -> Dict[str, np.ndarray]:
  """Reads the weights of a HF model directory: model.safetensors (or its sharded index;
  no torch needed) or pytorch_model.bin (needs torch)."""
  index = os.path.join(directory, SAFETENSORS_INDEX)
  if os.path.isfile(os.path.join(directory, SAFETENSORS)):
    return read_safetensors(os.path.join(directory, SAFETENSORS))
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(read_safetensors(os.path.join(directory, shard)))
    return out
  if os.path.isfile(os.path.join(directory, PYTORCH_BIN)):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"{directory}/{PYTORCH_BIN}: reading a PyTorch checkpoint needs torch; "
                        "convert it to model.safetensors or install torch") from None
    state = torch.load(os.path.join(directory, PYTORCH_BIN), map_location="cpu", weights_only=True)
    return {k: to_numpy(v) for k, v in state.items()}
  raise FileNotFoundError(f"{directory}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN}")


def write_safetensors(state_dict: Mapping[str, np.ndarray], path: str,
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes numpy arrays to a safetensors file that `transformers` accepts ("format": "pt")."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path,
            metadata={"format": "pt", **(metadata or {})})


# ----------------------------------------------------------------------------------------
# Loading and saving HF-format checkpoints.

HUB_WEIGHT_FILES = ["config.json", SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors", PYTORCH_BIN]


def read_pretrained(name_or_path: str, ignore_keys: Tuple[str, ...] = ()) -> Tuple[DebertaV2Config, Dict[str, Any]]:
  """Reads a HF DeBERTa-v2/v3 checkpoint as (config, params) on the host.

  The parameters stay numpy, so that a caller can place them shard by shard (a
  1.5B-parameter encoder never has to fit on one device).

  Args:
    name_or_path: a directory with config.json and model.safetensors (or its sharded
      index, or pytorch_model.bin), or a hub name such as "microsoft/deberta-v3-base".
    ignore_keys: regexes of extra checkpoint keys to skip (see `hf_to_flax`).

  Returns:
    (the encoder's config, its parameters as a nested dict of float32 numpy arrays).

  Raises:
    FileNotFoundError: no such directory, no weights in it, or a hub name that is not
      cached while offline (one line, see deberta_v2_hub).
    ConversionError: the weights do not fit the config (names the directory and key).
  """
  directory = str(deberta_v2_hub.resolve_pretrained_directory(name_or_path, HUB_WEIGHT_FILES))
  config = DebertaV2Config.from_hf(directory)
  state_dict = read_state_dict(directory)
  try:
    return config, hf_to_flax(state_dict, config, ignore_keys)
  except ConversionError as e:
    raise ConversionError(f"{directory}: {e}") from None


def load_pretrained(name_or_path: str, dtype: Any = jnp.float32, *, remat_policy: str = "none",
                    ignore_keys: Tuple[str, ...] = ()) -> Tuple[deberta_v2.DebertaV2Model, Any]:
  """Loads a HF DeBERTa-v2/v3 checkpoint as (model, params) on the default device.

  Args:
    name_or_path: a local directory or a hub name (see `read_pretrained`).
    dtype: compute dtype of the returned model; parameters stay float32.
    remat_policy: see DebertaV2Model.
    ignore_keys: regexes of extra checkpoint keys to skip (see `hf_to_flax`).

  Returns:
    (DebertaV2Model, params) with params a nested dict of float32 jax arrays.

  Raises:
    FileNotFoundError, ConversionError: as `read_pretrained`.
  """
  config, params = read_pretrained(name_or_path, ignore_keys)
  model = deberta_v2.DebertaV2Model(config, dtype=dtype, remat_policy=remat_policy)
  return model, jax.tree_util.tree_map(jnp.asarray, params)


def save_pretrained(params: Any, config: DebertaV2Config, directory: str) -> None:
  """Writes config.json and model.safetensors that `transformers.DebertaV2Model.from_pretrained`
  (and `load_pretrained`) read."""
  state_dict = flax_to_hf(params, config)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
  write_safetensors(state_dict, os.path.join(directory, SAFETENSORS))
