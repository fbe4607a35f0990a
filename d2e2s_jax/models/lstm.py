"""Bidirectional LSTM that honours each sentence's length, and a `torch.nn.LSTM` converter.

D2E2S runs two stacked bidirectional LSTMs: the channel over the encoder output (step 2 of
the reference page) and the fusion LSTM over the concatenated syntactic and semantic
features (step 5). Both are `BiLSTM` here.

Deliberate difference from the released code: the released LSTMs run over the padded batch
without packing, so the backward direction starts on padding and a sentence's features
depend on the longest sentence of its batch. `BiLSTM` runs the backward direction from each
sentence's last real token (what `torch.nn.utils.rnn.pack_padded_sequence` does) and sets
the outputs at padded positions to zero (what `pad_packed_sequence` returns). On a batch
without padding the two agree.

Parameters of one direction of one layer are stored fused, in PyTorch's gate order
(input, forget, cell, output): `input_kernel` [in, 4H], `recurrent_kernel` [H, 4H] and one
`bias` [4H] equal to PyTorch's `bias_ih + bias_hh`. The input projection of every time step
is one matmul before the scan, so the scan only carries the recurrent matmul, and both
directions share one scan.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _torch_uniform_init(hidden_size: int):
  """PyTorch's LSTM initialisation, U(-1/sqrt(H), 1/sqrt(H)), for every LSTM parameter."""
  bound = 1.0 / math.sqrt(hidden_size)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def reverse_within_lengths(x: Array, lengths: Array) -> Array:
  """Reverses each row's first `lengths[b]` steps and leaves the padding where it is.

  The permutation is its own inverse, so the same call undoes it.

  Args:
    x: [B, T, ...] sequences.
    lengths: [B] number of real steps per row.

  Returns:
    [B, T, ...] with x[b, :lengths[b]] reversed.
  """
  steps = jnp.arange(x.shape[1])[None, :]
  source = jnp.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
  return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=1)


class LSTMDirection(nn.Module):
  """The parameters of one direction of one LSTM layer (PyTorch's initialisation).

  Attributes:
    hidden_size: H, units of the layer.
  """

  hidden_size: int

  @nn.compact
  def __call__(self, features: int) -> Tuple[Array, Array, Array]:
    """Returns (input_kernel [features, 4H], recurrent_kernel [H, 4H], bias [4H])."""
    init = _torch_uniform_init(self.hidden_size)
    gates = 4 * self.hidden_size
    return (self.param("input_kernel", init, (features, gates)),
            self.param("recurrent_kernel", init, (self.hidden_size, gates)),
            self.param("bias", init, (gates,)))


def _bidirectional_recurrence(projected: Array, recurrent_kernels: Array, dtype: Any) -> Array:
  """Runs both directions in one scan, zero initial state.

  Args:
    projected: float32 [2, B, T, 4H] input projections plus bias; the backward direction's
      inputs are already reversed within each sentence.
    recurrent_kernels: [2, H, 4H].
    dtype: compute dtype of the recurrent matmul; gates and cell state stay float32.

  Returns:
    [2, B, T, H] hidden states, in `dtype`.
  """
  recurrent_kernels = recurrent_kernels.astype(dtype)

  def step(carry, projected_t):
    hidden, cell = carry
    gates = projected_t + jnp.einsum("zbh,zhg->zbg", hidden.astype(dtype), recurrent_kernels).astype(jnp.float32)
    input_gate, forget_gate, cell_gate, output_gate = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(forget_gate) * cell + jax.nn.sigmoid(input_gate) * jnp.tanh(cell_gate)
    hidden = jax.nn.sigmoid(output_gate) * jnp.tanh(cell)
    return (hidden, cell), hidden

  zeros = jnp.zeros(projected.shape[:2] + (recurrent_kernels.shape[1],), jnp.float32)
  _, hidden_states = jax.lax.scan(step, (zeros, zeros), jnp.moveaxis(projected, 2, 0))
  return jnp.moveaxis(hidden_states, 0, 2).astype(dtype)


class BiLSTM(nn.Module):
  """Stacked bidirectional LSTM over padded sentences, lengths honoured.

  Both directions of a layer run in one `jax.lax.scan` (the directions are a leading axis
  of size 2), which halves the sequential steps and the compiled loops.

  Attributes:
    hidden_size: units per direction; the output width is 2 * hidden_size.
    num_layers: stacked bidirectional layers.
    dropout_rate: dropout on the output of every layer but the last (PyTorch's `dropout`
      argument of `nn.LSTM`).
    dtype: compute dtype of the matmuls.
  """

  hidden_size: int
  num_layers: int = 2
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, mask: Array, deterministic: bool = True) -> Array:
    """Runs the layers.

    Args:
      inputs: [B, T, in] features.
      mask: [B, T] 1 on real positions; real positions must be a prefix of each row.
      deterministic: disables dropout when True.

    Returns:
      [B, T, 2 * hidden_size], forward then backward hidden states, zero at padding.
    """
    mask = mask.astype(bool)
    lengths = mask.sum(axis=1)
    keep = mask[..., None]
    outputs = inputs
    for layer in range(self.num_layers):
      directions = [LSTMDirection(self.hidden_size, name=f"layer{layer}_{d}")(outputs.shape[-1])
                    for d in ("forward", "reverse")]
      input_kernels, recurrent_kernels, biases = (jnp.stack(p) for p in zip(*directions))
      sequences = jnp.stack([outputs, reverse_within_lengths(outputs, lengths)]).astype(self.dtype)
      # One matmul for all time steps; only the recurrent part is sequential.
      projected = jnp.einsum("zbtf,zfg->zbtg", sequences, input_kernels.astype(self.dtype))
      projected = projected.astype(jnp.float32) + biases[:, None, None, :]
      forward, backward = _bidirectional_recurrence(projected, recurrent_kernels, self.dtype)
      backward = reverse_within_lengths(backward, lengths)
      outputs = jnp.where(keep, jnp.concatenate([forward, backward], axis=-1), 0)
      if layer < self.num_layers - 1 and self.dropout_rate > 0:
        outputs = nn.Dropout(self.dropout_rate)(outputs, deterministic=deterministic)
    return outputs


def convert_torch_lstm(state: Mapping[str, Any], num_layers: int, prefix: str = "") -> Dict[str, Any]:
  """Converts the weights of a bidirectional `torch.nn.LSTM` to `BiLSTM` parameters.

  Args:
    state: mapping from PyTorch names (`{prefix}weight_ih_l0`, ..., `_reverse` suffixes for
      the backward direction) to arrays or tensors.
    num_layers: number of stacked layers.
    prefix: prefix of the names in `state`, e.g. "lstm." for a state dict of a model.

  Returns:
    The `BiLSTM` parameter tree (without the outer {"params": ...}).

  Raises:
    KeyError: naming the missing PyTorch key.
  """
  params: Dict[str, Any] = {}
  for layer in range(num_layers):
    for suffix, direction in (("", "forward"), ("_reverse", "reverse")):
      def fetch(name):
        key = f"{prefix}{name}_l{layer}{suffix}"
        if key not in state:
          raise KeyError(f"missing LSTM weight {key!r}")
        value = state[key]
        if hasattr(value, "detach"):
          value = value.detach().cpu().numpy()
        return np.asarray(value, np.float32)

      params[f"layer{layer}_{direction}"] = {
          "input_kernel": fetch("weight_ih").T,
          "recurrent_kernel": fetch("weight_hh").T,
          "bias": fetch("bias_ih") + fetch("bias_hh"),
      }
  return params


def torch_lstm_keys(num_layers: int, prefix: str = "") -> list:
  """The PyTorch names `convert_torch_lstm` reads, for the importer's bookkeeping."""
  return [f"{prefix}{name}_l{layer}{suffix}" for layer in range(num_layers)
          for suffix in ("", "_reverse") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
