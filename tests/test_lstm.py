"""BiLSTM parity with a packed `torch.nn.LSTM`, length handling and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from d2e2s_jax.models import lstm


def _padded_batch(rng, lengths, features):
  inputs = rng.standard_normal((len(lengths), max(lengths) + 2, features)).astype(np.float32)
  mask = np.arange(inputs.shape[1])[None, :] < np.asarray(lengths)[:, None]
  return inputs, mask


@pytest.mark.parametrize("num_layers", [1, 2])
def test_matches_packed_torch_lstm(num_layers):
  rng = np.random.default_rng(num_layers)
  features, hidden, lengths = 6, 5, [7, 3, 1, 5]
  inputs, mask = _padded_batch(rng, lengths, features)
  torch.manual_seed(0)
  reference = torch.nn.LSTM(features, hidden, num_layers, batch_first=True, bidirectional=True)
  with torch.no_grad():
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(inputs), torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(
        reference(packed)[0], batch_first=True, total_length=inputs.shape[1])
  params = lstm.convert_torch_lstm(reference.state_dict(), num_layers)
  model = lstm.BiLSTM(hidden, num_layers)
  got = jax.jit(model.apply)({"params": params}, inputs, mask)
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), atol=1e-5, rtol=1e-5)
  # Packed torch pads its output with zeros; so do we.
  assert np.all(np.asarray(got)[~mask] == 0)


def test_gradients_match_packed_torch_lstm():
  """The hand-written backward pass of the recurrence gives torch's gradients (inputs and
  every weight), padding included (no gradient reaches padded inputs)."""
  rng = np.random.default_rng(4)
  features, hidden, lengths = 6, 5, [7, 3, 1, 5]
  inputs, mask = _padded_batch(rng, lengths, features)
  weights = rng.standard_normal(inputs.shape[:2] + (2 * hidden,)).astype(np.float32)
  torch.manual_seed(0)
  reference = torch.nn.LSTM(features, hidden, 2, batch_first=True, bidirectional=True)
  torch_inputs = torch.from_numpy(inputs).requires_grad_()
  packed = torch.nn.utils.rnn.pack_padded_sequence(torch_inputs, torch.tensor(lengths), batch_first=True,
                                                   enforce_sorted=False)
  outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True,
                                                      total_length=inputs.shape[1])
  (outputs * torch.from_numpy(weights)).sum().backward()
  expected = lstm.convert_torch_lstm({name: value.grad for name, value in reference.named_parameters()}, 2)

  params = lstm.convert_torch_lstm(reference.state_dict(), 2)
  loss = lambda p, x: jnp.sum(lstm.BiLSTM(hidden, 2).apply({"params": p}, x, mask) * weights)
  param_grads, input_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, inputs)
  np.testing.assert_allclose(np.asarray(input_grads), torch_inputs.grad.numpy(), atol=1e-5, rtol=1e-5)
  for layer, leaves in expected.items():
    for name, value in leaves.items():
      # convert_torch_lstm sums bias_ih and bias_hh; their gradients are equal, so halve.
      value = value / 2 if name == "bias" else value
      np.testing.assert_allclose(np.asarray(param_grads[layer][name]), value, atol=1e-5, rtol=1e-5,
                                 err_msg=f"{layer}/{name}")


def test_unpadded_batch_matches_plain_torch_lstm():
  """Without padding there is nothing to honour: the plain (unpacked) call agrees too."""
  rng = np.random.default_rng(3)
  inputs = rng.standard_normal((2, 6, 4)).astype(np.float32)
  reference = torch.nn.LSTM(4, 3, 2, batch_first=True, bidirectional=True)
  with torch.no_grad():
    expected, _ = reference(torch.from_numpy(inputs))
  params = lstm.convert_torch_lstm(reference.state_dict(), 2)
  got = lstm.BiLSTM(3, 2).apply({"params": params}, inputs, np.ones((2, 6), bool))
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), atol=1e-5)


def test_reverse_within_lengths_is_an_involution():
  x = jnp.arange(12).reshape(2, 6)
  lengths = jnp.array([4, 6])
  flipped = lstm.reverse_within_lengths(x, lengths)
  np.testing.assert_array_equal(flipped, [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]])
  np.testing.assert_array_equal(lstm.reverse_within_lengths(flipped, lengths), x)


def test_dropout_between_layers_only_when_not_deterministic():
  rng = np.random.default_rng(1)
  inputs, mask = _padded_batch(rng, [5, 4], 4)
  model = lstm.BiLSTM(8, 2, dropout_rate=0.5)
  params = model.init(jax.random.key(0), inputs, mask)
  first = model.apply(params, inputs, mask)
  np.testing.assert_array_equal(first, model.apply(params, inputs, mask))
  dropped = model.apply(params, inputs, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(first, dropped)


def test_bfloat16_compute_is_close():
  rng = np.random.default_rng(2)
  inputs, mask = _padded_batch(rng, [6, 2], 4)
  params = lstm.BiLSTM(8, 2).init(jax.random.key(0), inputs, mask)
  full = lstm.BiLSTM(8, 2).apply(params, inputs, mask)
  half = lstm.BiLSTM(8, 2, dtype=jnp.bfloat16).apply(params, inputs, mask)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=3e-2)
