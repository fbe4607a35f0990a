"""SynGCN and SemGCN against the dense formulas of the reference page, both implementations."""

import jax
import numpy as np
import pytest

from d2e2s_jax.models import gcn

LENGTHS = (9, 5, 1)
WIDTH = 8


def _random_batch(seed, edges_per_sentence=40):
  """Padded features, attention mask and a random undirected graph with self-loops."""
  rng = np.random.default_rng(seed)
  length = max(LENGTHS) + 3
  inputs = rng.standard_normal((len(LENGTHS), length, WIDTH)).astype(np.float32)
  mask = np.arange(length)[None, :] < np.asarray(LENGTHS)[:, None]
  senders = rng.integers(0, length, (len(LENGTHS), edges_per_sentence)).astype(np.int32)
  receivers = rng.integers(0, length, (len(LENGTHS), edges_per_sentence)).astype(np.int32)
  edge_mask = np.zeros((len(LENGTHS), edges_per_sentence), bool)
  for row, n in enumerate(LENGTHS):
    edges = {(i, i) for i in range(n)}
    for _ in range(n):
      a, b = rng.integers(0, n, 2)
      edges |= {(a, b), (b, a)}
    edges = sorted(edges)[:edges_per_sentence]
    senders[row, :len(edges)] = [s for s, _ in edges]
    receivers[row, :len(edges)] = [r for _, r in edges]
    edge_mask[row, :len(edges)] = True
  return inputs, mask, gcn.SyntacticEdges(senders, receivers, edge_mask)


def _linear(params, x):
  return x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])


def _relu(x):
  return np.maximum(x, 0)


def _dense_adjacency(edges, length):
  adjacency = np.zeros((len(edges.senders), length, length), np.float32)
  for row in range(len(edges.senders)):
    for s, r, real in zip(edges.senders[row], edges.receivers[row], edges.edge_mask[row]):
      if real:
        adjacency[row, r, s] = 1
  return adjacency


@pytest.mark.parametrize("implementation", gcn.IMPLEMENTATIONS)
def test_syn_gcn_matches_dense_formula(implementation):
  inputs, mask, edges = _random_batch(0)
  model = gcn.SynGCN(WIDTH, num_layers=2, implementation=implementation)
  params = model.init(jax.random.key(0), inputs, edges)["params"]
  got = jax.jit(model.apply)({"params": params}, inputs, edges)

  adjacency = _dense_adjacency(edges, inputs.shape[1])
  np.testing.assert_array_equal(edges.dense(inputs.shape[1]), adjacency)
  denom = adjacency.sum(-1, keepdims=True) + 1
  x = inputs
  for layer in ("layers_0", "layers_1"):
    x = _relu((_linear(params[layer], adjacency @ x) + _linear(params[layer], x)) / denom)
  np.testing.assert_allclose(np.asarray(got), x, atol=1e-5, rtol=1e-5)


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("implementation", gcn.IMPLEMENTATIONS)
@pytest.mark.parametrize("heads", [1, 4])
def test_sem_gcn_matches_dense_formula(implementation, heads):
  inputs, mask, _ = _random_batch(1)
  model = gcn.SemGCN(WIDTH, num_heads=heads, num_layers=2, implementation=implementation)
  params = model.init(jax.random.key(1), inputs, mask)["params"]
  got, got_adjacency = jax.jit(model.apply)({"params": params}, inputs, mask)

  batch, length, _ = inputs.shape
  head_dim = WIDTH // heads
  split = lambda x: x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)
  queries, keys = split(_linear(params["query"], inputs)), split(_linear(params["key"], inputs))
  scores = queries @ keys.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
  scores = np.where(mask[:, None, None, :], scores, -1e9)
  adjacency = _softmax(scores).mean(1)
  adjacency[:, np.arange(length), np.arange(length)] = 1
  adjacency *= mask[:, :, None]
  np.testing.assert_allclose(np.asarray(got_adjacency), adjacency, atol=1e-6)

  denom = adjacency.sum(-1, keepdims=True) + 1
  x = inputs
  for layer in ("layers_0", "layers_1"):
    x = _relu(_linear(params[layer], adjacency @ x) / denom)
  np.testing.assert_allclose(np.asarray(got), x, atol=1e-5, rtol=1e-5)


def test_dropout_between_layers_and_on_attention():
  inputs, mask, edges = _random_batch(2)
  for model, args in ((gcn.SynGCN(WIDTH, dropout_rate=0.5), (inputs, edges)),
                      (gcn.SemGCN(WIDTH, dropout_rate=0.5), (inputs, mask))):
    params = model.init(jax.random.key(0), *args)
    first = jax.tree.leaves(model.apply(params, *args))[0]
    np.testing.assert_array_equal(first, jax.tree.leaves(model.apply(params, *args))[0])
    dropped = model.apply(params, *args, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(first, jax.tree.leaves(dropped)[0])


def test_unknown_implementation_is_an_error():
  inputs, _, edges = _random_batch(3)
  with pytest.raises(ValueError, match="unknown graph implementation"):
    gcn.SynGCN(WIDTH, implementation="sparse").init(jax.random.key(0), inputs, edges)
