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
is one matmul per direction before the scan, so the scan only carries the recurrent matmul,
and both directions share one scan. The recurrence has a hand-written backward pass (`_recurrence`):
the recurrent kernel's gradient is one matmul after the reverse loop instead of a sum
accumulated inside it, which made the training step of a base-sized model markedly
faster on CPU (measured against the autodiff recurrence by benchmarks/train_step.py at
commit 744d202).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from d2e2s_jax.models.dropout import Dropout

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
  steps = jnp.arange(x.shape[1])

  def one(row, length):
    return row[jnp.where(steps < length, length - 1 - steps, steps)]

  # Per sentence (vmap): a gather with a batch dimension, partitioned without gathering the
  # batch when it is sharded.
  return jax.vmap(one)(x, lengths)


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


def _cell_gate_lanes(width: int) -> Array:
  """[4H] bool, True on the cell gate's lanes (gate order i, f, g, o): the tanh lanes.

  Behind an optimization barrier: with a constant mask, XLA splits `where(mask, tanh,
  sigmoid)` back into four slices and a concatenation, the form this replaces.
  """
  return jax.lax.optimization_barrier(jnp.asarray(np.arange(width) // (width // 4) == 2))


def _cell(gates: Array, cell: Array) -> Tuple[Array, Array, Array]:
  """One LSTM cell update from float32 pre-activations [..., 4H] (gate order i, f, g, o).

  The activations are elementwise over all 4H lanes (tanh on the cell gate's, sigmoid on
  the others) rather than four slices and a concatenation: the same values in fewer
  operations per time step (each step of a small model's loop costs per operation), at
  the price of evaluating both functions on every lane.

  Returns:
    (new hidden, new cell, activations [..., 4H] = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)).
  """
  activations = jnp.where(_cell_gate_lanes(gates.shape[-1]), jnp.tanh(gates), jax.nn.sigmoid(gates))
  input_gate, forget_gate, cell_gate, output_gate = jnp.split(activations, 4, axis=-1)
  cell = forget_gate * cell + input_gate * cell_gate
  hidden = output_gate * jnp.tanh(cell)
  return hidden, cell, activations


def _recurrent_matmul(hidden: Array, kernels: Array, dtype: Any) -> Array:
  """float32 `hidden @ kernel` per direction: [2, B, H] x [2, H, 4H] -> [2, B, 4H]."""
  return jnp.einsum("zbh,zhg->zbg", hidden.astype(dtype), kernels.astype(dtype)).astype(jnp.float32)


def _recurrence_forward(projected: Array, recurrent_kernels: Array, dtype: Any):
  """The scan of `_recurrence`; returns (hidden [T, 2, B, H], (previous cells, activations)).

  The residuals hold c_{t-1} (not c_t) beside the gate activations of step t: the backward
  pass needs both and recomputes c_t = f c_{t-1} + i g from them.
  """
  kernels = recurrent_kernels.astype(dtype)

  def step(carry, projected_t):
    hidden, previous_cell = carry
    hidden, cell, activations = _cell(projected_t + _recurrent_matmul(hidden, kernels, dtype), previous_cell)
    return (hidden, cell), (hidden, previous_cell, activations)

  zeros = jnp.zeros(projected.shape[1:-1] + (recurrent_kernels.shape[1],), jnp.float32)
  _, (hidden, previous_cells, activations) = jax.lax.scan(step, (zeros, zeros), projected)
  return hidden, (previous_cells, activations)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _recurrence(projected: Array, recurrent_kernels: Array, dtype: Any) -> Array:
  """Both directions' LSTM recurrence over time-major float32 projections, zero initial state.

  Args:
    projected: float32 [T, 2, B, 4H] input projections plus bias (direction axis 1).
    recurrent_kernels: [2, H, 4H].
    dtype: compute dtype of the recurrent matmul; gates and cell state stay float32.

  Returns:
    float32 [T, 2, B, H] hidden states.

  The backward pass is written out (`_recurrence_bwd`) rather than derived by autodiff
  of the scan, which accumulates the recurrent kernel's gradient inside the reverse loop
  (T small [H, B] x [B, 4H] matmuls and T additions of a [2, H, 4H] accumulator), stores
  about a dozen per-step residual stacks, and multiplies by the kernel along its output
  axis in every step. Here the loop carries only the hidden and cell gradients and stacks
  the gate gradients; the kernel gradient is one [H, T*B] x [T*B, 4H] matmul after the
  loop, and the loop multiplies by a kernel transposed once before it. The same sums up to
  float32 rounding (tests/test_lstm.py compares the gradients with torch's). Measured on
  CPU by benchmarks/train_step.py at commit 744d202.
  """
  return _recurrence_forward(projected, recurrent_kernels, dtype)[0]


def _recurrence_fwd(projected: Array, recurrent_kernels: Array, dtype: Any):
  hidden, (previous_cells, activations) = _recurrence_forward(projected, recurrent_kernels, dtype)
  return hidden, (hidden, previous_cells, activations, recurrent_kernels)


def _recurrence_bwd(dtype: Any, residuals, hidden_grads: Array):
  hidden, previous_cells, activations, recurrent_kernels = residuals
  # [2, 4H, H], materialised once: the loop's matmul then reads the kernel in the layout the
  # forward pass reads it (a dot along the kernel's last axis is much slower on CPU).
  transposed_kernels = jnp.swapaxes(recurrent_kernels.astype(dtype), 1, 2)
  cell_lanes = _cell_gate_lanes(activations.shape[-1])

  def step(carry, inputs):
    hidden_grad, cell_grad = carry  # flowing back from step t + 1
    output_grad, activations_t, previous_cell = inputs
    input_gate, forget_gate, cell_gate, output_gate = jnp.split(activations_t, 4, axis=-1)
    tanh_cell = jnp.tanh(forget_gate * previous_cell + input_gate * cell_gate)
    hidden_grad = hidden_grad + output_grad
    cell_grad = cell_grad + hidden_grad * output_gate * (1 - tanh_cell * tanh_cell)
    # Per lane, the factor that multiplies the activation's derivative (sigmoid' = s (1 - s),
    # tanh' = 1 - t^2), then one elementwise pass over all 4H lanes (as in `_cell`).
    factors = jnp.concatenate([cell_grad * cell_gate, cell_grad * previous_cell, cell_grad * input_gate,
                               hidden_grad * tanh_cell], axis=-1)
    gate_grads = jnp.where(cell_lanes, factors * (1 - activations_t * activations_t),
                           factors * activations_t * (1 - activations_t))
    previous_hidden_grad = jnp.einsum("zbg,zgh->zbh", gate_grads.astype(dtype), transposed_kernels)
    return (previous_hidden_grad.astype(jnp.float32), cell_grad * forget_gate), gate_grads

  zeros = jnp.zeros_like(previous_cells[0])
  _, gate_grads = jax.lax.scan(step, (zeros, zeros), (hidden_grads.astype(jnp.float32), activations, previous_cells),
                               reverse=True)
  # The recurrent kernel's gradient, sum_t h_{t-1}^T dgates_t (h_{-1} = 0): one matmul.
  kernel_grads = jnp.einsum("tzbh,tzbg->zhg", hidden[:-1].astype(dtype), gate_grads[1:].astype(dtype),
                            preferred_element_type=jnp.float32)
  return gate_grads, kernel_grads.astype(recurrent_kernels.dtype)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


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
  hidden_states = _recurrence(jnp.moveaxis(projected, 2, 0), recurrent_kernels, dtype)
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
  def __call__(self, inputs: Array, mask: Array, deterministic: bool = True,
               dropout_rate: Optional[Array] = None) -> Array:
    """Runs the layers.

    Args:
      inputs: [B, T, in] features.
      mask: [B, T] 1 on real positions; real positions must be a prefix of each row.
      deterministic: disables dropout when True.
      dropout_rate: a runtime rate overriding `self.dropout_rate` (see `dropout.Dropout`;
        then the dropout between layers runs whatever the value).

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
      # One matmul per direction for all time steps; only the recurrent part is sequential.
      # The projections are stacked along the direction axis, not the input kernels; a stack
      # is a copy, and B x T x 4H (a projection) is smaller than F x 4H (a kernel) whenever
      # B x T < F: at base size, a batch of 16 sentences under 96 sub-tokens in the fusion
      # LSTM (F = 1536), under 48 in the channel LSTM (F = 768).
      sequences = (outputs, reverse_within_lengths(outputs, lengths))
      projected = jnp.stack([
          jnp.einsum("btf,fg->btg", sequence.astype(self.dtype), input_kernel.astype(self.dtype))
          .astype(jnp.float32) + bias
          for sequence, (input_kernel, _, bias) in zip(sequences, directions)])
      recurrent_kernels = jnp.stack([recurrent_kernel for _, recurrent_kernel, _ in directions])
      forward, backward = _bidirectional_recurrence(projected, recurrent_kernels, self.dtype)
      backward = reverse_within_lengths(backward, lengths)
      outputs = jnp.where(keep, jnp.concatenate([forward, backward], axis=-1), 0)
      if layer < self.num_layers - 1 and (dropout_rate is not None or self.dropout_rate > 0):
        outputs = Dropout(self.dropout_rate)(outputs, deterministic=deterministic, rate=dropout_rate)
    return outputs


def convert_torch_lstm(state: Mapping[str, Any], num_layers: int, prefix: str = "") -> Dict[str, Any]:
  """Converts the weights of a bidirectional `torch.nn.LSTM` to `BiLSTM` parameters.

  Args:
    state: mapping from PyTorch names (`{prefix}weight_ih_l0`, ..., `_reverse` suffixes for
      the backward direction) to arrays: numpy, or anything `np.asarray` reads, such as
      CPU torch tensors that need no gradient (`deberta_v2_convert.to_numpy` converts
      any other tensor).
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
        return np.asarray(state[key], np.float32)

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
