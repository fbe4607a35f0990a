"""Import of state dicts saved by the released PyTorch D2E2S model (`D2E2SModel`).

The released module names and ours (`D2E2SHead`'s submodules):

| released key | our parameter |
|---|---|
| `lstm.{weight,bias}_{ih,hh}_l{l}[_reverse]` | `lstm/layer{l}_{forward,reverse}` (lstm.convert_torch_lstm) |
| `Syn_gcn.W.{l}.{weight,bias}` | `syn_gcn/layers_{l}/{kernel,bias}` |
| `Sem_gcn.W.{l}.{weight,bias}` | `sem_gcn/layers_{l}` |
| `Sem_gcn.attn.linears.{0,1}.*` | `sem_gcn/query`, `sem_gcn/key` |
| `TIN.residual_layer{2,4}.{0,2,3}.*` | `fusion/residual_layer{2,4}/{linear_0,linear_2,norm_3}` |
| `TIN.lstm.*` | `fusion/lstm` |
| `TIN.feature_fusion.{0,2,3}.*` | `fusion/feature_fusion/{linear_0,linear_2,norm_3}` |
| `entity_classifier.*`, `senti_classifier.*` | same names |
| `size_embeddings.weight` | `size_embeddings/embedding` |
| `bert.*` or `deberta.*` | the encoder (deberta_v2_convert.hf_to_flax) |

Parameters the released model holds but never uses in its forward pass are listed in
`UNUSED_RELEASED_PARAMETERS` and reported as ignored (returned and logged), never
skipped silently: `fc.*`, `attention_layer.*` (its self-attention has no parameters in
the forward that is called), `TIN.residual_layer1.*`, `TIN.residual_layer3.*` (blocks whose
outputs are discarded) and `TIN.GatedGCN.*` (commented out of the forward). Any other key
that maps to no parameter, a missing key, or a shape mismatch raises `ReleasedImportError`
naming the key.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from d2e2s_jax.models import deberta_v2_convert
from d2e2s_jax.models import lstm as lstm_lib
from d2e2s_jax.models.d2e2s import D2E2SConfig, D2E2SHead

UNUSED_RELEASED_PARAMETERS = (
    r"^fc\.",
    r"^attention_layer\.",
    r"^TIN\.residual_layer1\.",
    r"^TIN\.residual_layer3\.",
    r"^TIN\.GatedGCN\.",
)
ENCODER_PREFIXES = ("bert.", "deberta.")


class ReleasedImportError(ValueError):
  """A released state dict does not match the configured model. The message names the key."""


def _head_key_table(config: D2E2SConfig) -> Dict[Tuple[str, ...], Tuple[str, str]]:
  """{our head parameter path: (released key, conversion)} for every non-LSTM parameter.

  Conversions: "linear" transposes a PyTorch [out, in] weight, "copy" copies.
  """
  table: Dict[Tuple[str, ...], Tuple[str, str]] = {}

  def linear(ours: Tuple[str, ...], released: str):
    table[ours + ("kernel",)] = (released + ".weight", "linear")
    table[ours + ("bias",)] = (released + ".bias", "copy")

  def block(ours: Tuple[str, ...], released: str):
    linear(ours + ("linear_0",), released + ".0")
    linear(ours + ("linear_2",), released + ".2")
    table[ours + ("norm_3", "scale")] = (released + ".3.weight", "copy")
    table[ours + ("norm_3", "bias")] = (released + ".3.bias", "copy")

  for layer in range(config.gcn_layers):
    linear(("syn_gcn", f"layers_{layer}"), f"Syn_gcn.W.{layer}")
    linear(("sem_gcn", f"layers_{layer}"), f"Sem_gcn.W.{layer}")
  linear(("sem_gcn", "query"), "Sem_gcn.attn.linears.0")
  linear(("sem_gcn", "key"), "Sem_gcn.attn.linears.1")
  block(("fusion", "residual_layer2"), "TIN.residual_layer2")
  block(("fusion", "residual_layer4"), "TIN.residual_layer4")
  block(("fusion", "feature_fusion"), "TIN.feature_fusion")
  linear(("entity_classifier",), "entity_classifier")
  linear(("senti_classifier",), "senti_classifier")
  table[("size_embeddings", "embedding")] = ("size_embeddings.weight", "copy")
  return table


def _expected_head_shapes(config: D2E2SConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flat {path: shape} of `D2E2SHead(config)`'s parameters, from an abstract init."""
  batch = {
      "attention_mask": jnp.ones((1, 4), jnp.int32),
      "span_token_bounds": jnp.array([[[1, 2]]], jnp.int32),
      "span_sizes": jnp.ones((1, 1), jnp.int32),
      "span_mask": jnp.ones((1, 1), bool),
      "pair_indices": jnp.zeros((1, 1, 2), jnp.int32),
      "graph_senders": jnp.zeros((1, 1), jnp.int32),
      "graph_receivers": jnp.zeros((1, 1), jnp.int32),
      "graph_edge_mask": jnp.ones((1, 1), bool),
  }
  hidden = jnp.zeros((1, 4, config.hidden_size))
  abstract = jax.eval_shape(D2E2SHead(config).init, jax.random.key(0), hidden, batch)["params"]
  return {tuple(getattr(k, "key", k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def _set(tree: Dict[str, Any], path: Tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _import_head(state: Mapping[str, Any], config: D2E2SConfig) -> Tuple[Dict[str, Any], set]:
  """Head parameters from the non-encoder keys, and the set of keys used."""
  flat: Dict[Tuple[str, ...], np.ndarray] = {}
  used = set()
  for path, (key, conversion) in _head_key_table(config).items():
    if key not in state:
      raise ReleasedImportError(f"released state dict has no key {key!r} (for {'/'.join(path)})")
    value = np.asarray(state[key], np.float32)
    flat[path] = value.T if conversion == "linear" else value
    used.add(key)
  for ours, prefix, layers in (("lstm", "lstm.", config.lstm_layers), ("fusion/lstm", "TIN.lstm.", 2)):
    try:
      lstm_params = lstm_lib.convert_torch_lstm(state, layers, prefix=prefix)
    except KeyError as error:
      raise ReleasedImportError(f"released state dict: {error.args[0]}") from None
    for direction, leaves in lstm_params.items():
      for leaf, value in leaves.items():
        flat[tuple(ours.split("/")) + (direction, leaf)] = value
    used.update(lstm_lib.torch_lstm_keys(layers, prefix))

  expected = _expected_head_shapes(config)
  for path, shape in expected.items():
    if path not in flat:
      raise ReleasedImportError(f"no released key maps to parameter {'/'.join(path)}")
    if flat[path].shape != shape:
      raise ReleasedImportError(f"parameter {'/'.join(path)} from the released state dict has shape "
                                f"{flat[path].shape}, the configured head expects {shape}")
  params: Dict[str, Any] = {}
  for path, value in flat.items():
    _set(params, path, value)
  return params, used


def import_released_state_dict(state_dict: Mapping[str, Any], config: D2E2SConfig, *, return_ignored: bool = False
                               ) -> Union[Dict[str, Any], Tuple[Dict[str, Any], List[str]]]:
  """Converts a released D2E2S state dict to our parameters.

  Args:
    state_dict: released key -> torch tensor or numpy array (`D2E2SModel.state_dict()`).
    config: the `D2E2SConfig` the checkpoint was trained with (its `encoder` set when the
      state dict holds encoder keys).
    return_ignored: also return the sorted released keys that were deliberately ignored.

  Returns:
    Parameters for `D2E2S` ({"encoder": ..., "head": ...}) when the state dict has
    encoder keys (`bert.` or `deberta.`), else for `D2E2SHead`; with `return_ignored`,
    the pair (params, ignored keys). Ignored keys are also logged.

  Raises:
    ReleasedImportError: a missing, mis-shaped or unmapped key, or encoder keys without
      `config.encoder`.
  """
  state_dict = {key: deberta_v2_convert.to_numpy(value) for key, value in state_dict.items()}
  encoder_state = {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES)}
  head_state = {k: v for k, v in state_dict.items() if not k.startswith(ENCODER_PREFIXES)}
  head_params, used = _import_head(head_state, config)

  unused_patterns = [re.compile(p) for p in UNUSED_RELEASED_PARAMETERS]
  ignored = sorted(k for k in head_state if k not in used and any(p.search(k) for p in unused_patterns))
  unmapped = sorted(k for k in head_state if k not in used and k not in ignored)
  if unmapped:
    raise ReleasedImportError(f"released keys mapped to no parameter: {', '.join(map(repr, unmapped))}")
  if ignored:
    logging.info("Ignoring %d released parameters unused by the forward pass: %s", len(ignored), ", ".join(ignored))

  params: Dict[str, Any] = head_params
  if encoder_state:
    if config.encoder is None:
      raise ReleasedImportError("the state dict has encoder keys (e.g. "
                                f"{next(iter(encoder_state))!r}) but config.encoder is None")
    # The released model calls its encoder `bert` whatever it is; the converter reads
    # DeBERTa keys under `deberta.`.
    renamed = {"deberta." + k.split(".", 1)[1]: v for k, v in encoder_state.items()}
    try:
      encoder_params = deberta_v2_convert.hf_to_flax(renamed, config.encoder)
    except deberta_v2_convert.ConversionError as error:
      raise ReleasedImportError(f"encoder: {error}") from error
    params = {"encoder": encoder_params, "head": head_params}
  return (params, ignored) if return_ignored else params
