"""D2E2SHead: shapes, padding invariance, dropout, gradients, tracing, KL flag and losses."""

import collections
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2e2s_jax.models import d2e2s, losses

WIDTH = 16
TINY = d2e2s.D2E2SConfig(hidden_size=WIDTH, hidden_dim=WIDTH // 2, attention_heads=2, size_embedding=5,
                         max_decoded_spans=6, drop_out_rate=0.3, prop_drop=0.2)


def make_batch(seed, word_counts=(5, 3, 0), max_span=3, length=None, num_spans=None, num_pairs=None,
               num_edges=None, pairs_per_row=6):
  """A synthetic batch following WORKSPACE.md's contract; a word count of 0 is a padding row.

  Words get 1 or 2 pieces; the graph links consecutive words and the pieces of a word.
  Padded sizes default to the smallest that fit.
  """
  rng = np.random.default_rng(seed)
  rows = []
  for words in word_counts:
    pieces = rng.integers(1, 3, words)
    starts = 1 + np.concatenate([[0], np.cumsum(pieces)[:-1]]).astype(int) if words else np.zeros(0, int)
    ends = starts + pieces
    real = 2 + int(pieces.sum()) if words else 0
    spans = [((i, i + size), (starts[i], ends[i + size - 1]), size)
             for size in range(1, max_span + 1) for i in range(words - size + 1)]
    edges = {(p, p) for p in range(real)}
    for word in range(words):
      group = list(range(starts[word], ends[word]))
      nxt = list(range(starts[word + 1], ends[word + 1])) if word + 1 < words else []
      edges |= {(a, b) for a in group for b in group + nxt} | {(b, a) for a in group for b in nxt}
    pairs = []
    while len(spans) > 1 and len(pairs) < pairs_per_row:
      a, b = rng.choice(len(spans), 2, replace=False)
      pairs.append((a, b))
    rows.append((real, spans, sorted(edges), pairs))
  batch_size = len(word_counts)
  length = length or max(r[0] for r in rows)
  num_spans = num_spans or max(len(r[1]) for r in rows)
  num_pairs = num_pairs or max(max(len(r[3]) for r in rows), 1)
  num_edges = num_edges or max(len(r[2]) for r in rows)
  batch = {
      "input_ids": np.zeros((batch_size, length), np.int32),
      "attention_mask": np.zeros((batch_size, length), np.int32),
      "span_token_bounds": np.zeros((batch_size, num_spans, 2), np.int32),
      "span_word_bounds": np.zeros((batch_size, num_spans, 2), np.int32),
      "span_sizes": np.zeros((batch_size, num_spans), np.int32),
      "span_mask": np.zeros((batch_size, num_spans), bool),
      "span_labels": np.zeros((batch_size, num_spans), np.int32),
      "pair_indices": np.zeros((batch_size, num_pairs, 2), np.int32),
      "pair_mask": np.zeros((batch_size, num_pairs), bool),
      "pair_labels": np.zeros((batch_size, num_pairs, 4), np.float32),
      "graph_senders": np.zeros((batch_size, num_edges), np.int32),
      "graph_receivers": np.zeros((batch_size, num_edges), np.int32),
      "graph_edge_mask": np.zeros((batch_size, num_edges), bool),
      "example_index": np.full((batch_size,), -1, np.int32),
      "example_mask": np.zeros((batch_size,), bool),
  }
  for row, (real, spans, edges, pairs) in enumerate(rows):
    batch["input_ids"][row, :real] = rng.integers(3, 50, real)
    batch["attention_mask"][row, :real] = 1
    for s, (words, tokens, size) in enumerate(spans):
      batch["span_word_bounds"][row, s], batch["span_token_bounds"][row, s] = words, tokens
      batch["span_sizes"][row, s] = size
      batch["span_mask"][row, s] = True
      batch["span_labels"][row, s] = rng.integers(0, 3)
    for e, (sender, receiver) in enumerate(edges):
      batch["graph_senders"][row, e], batch["graph_receivers"][row, e] = sender, receiver
      batch["graph_edge_mask"][row, e] = True
    for p, pair in enumerate(pairs):
      batch["pair_indices"][row, p] = pair
      batch["pair_mask"][row, p] = True
      batch["pair_labels"][row, p] = rng.integers(0, 2, 4) * (rng.random() < 0.5)
    if real:
      batch["example_index"][row], batch["example_mask"][row] = row, True
  return batch


def _hidden(batch, seed=0):
  shape = batch["input_ids"].shape + (WIDTH,)
  return jax.random.normal(jax.random.key(seed), shape)


# One padded shape for most tests, so that each jitted function compiles once.
STANDARD = dict(length=16, num_spans=16, num_pairs=6, num_edges=96)
TRACES = collections.Counter()


@functools.lru_cache(maxsize=None)
def train_step(config, deterministic):
  """A jitted (loss, parts, outputs, intermediates), grads function for `config`."""
  head = d2e2s.D2E2SHead(config)

  @jax.jit
  def step(params, hidden, batch, key):
    TRACES[(config, deterministic, hidden.shape)] += 1

    def loss_fn(params):
      outputs, state = head.apply({"params": params}, hidden, batch, deterministic=deterministic,
                                  rngs={"dropout": key}, mutable=["intermediates"])
      loss, parts = losses.d2e2s_loss(outputs, batch)
      return loss, (parts, outputs, state["intermediates"])

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return (loss,) + aux, grads

  return step


def run(config, params, batch, deterministic=True, key=0):
  return train_step(config, deterministic)(params, _hidden(batch), batch, jax.random.key(key))


@pytest.fixture(scope="module")
def params():
  batch = make_batch(0, **STANDARD)
  return jax.jit(d2e2s.D2E2SHead(TINY).init)(jax.random.key(0), _hidden(batch), batch)["params"]


def test_range_max_matches_brute_force():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 13, 3)).astype(np.float32)
  starts, ends = np.meshgrid(np.arange(13), np.arange(14), indexing="ij")
  keep = ends > starts
  start, end = np.broadcast_to(starts[keep], (2, keep.sum())), np.broadcast_to(ends[keep], (2, keep.sum()))
  got = d2e2s.range_max(d2e2s.range_max_table(jnp.asarray(x)), jnp.asarray(start), jnp.asarray(end))
  expected = np.stack([[x[b, s:e].max(0) for s, e in zip(start[b], end[b])] for b in range(2)])
  np.testing.assert_array_equal(got, expected)


def test_shapes_intermediates_and_implementations_agree(params):
  batch = make_batch(0, **STANDARD)
  (loss, parts, out, intermediates), _ = run(TINY, params, batch)
  assert out["span_logits"].shape == batch["span_mask"].shape + (3,)
  assert out["pair_logits"].shape == batch["pair_mask"].shape + (4,)
  assert out["kl_term"].shape == () and out["span_logits"].dtype == jnp.float32
  assert {"channel", "syntactic", "semantic", "semantic_adjacency", "fused", "features"} <= set(intermediates)
  jraph_head = d2e2s.D2E2SHead(dataclasses.replace(TINY, graph_implementation="jraph"))
  jraph_out = jax.jit(jraph_head.apply)({"params": params}, _hidden(batch), batch)
  for key in out:
    assert np.isfinite(out[key]).all()
    np.testing.assert_allclose(jraph_out[key], out[key], atol=1e-5, rtol=1e-5)


def test_real_rows_do_not_depend_on_padding(params):
  """More padding (T, S, P, E, rows) leaves every real span and pair output unchanged."""
  small = make_batch(1, word_counts=(5, 3))
  large = make_batch(1, word_counts=(5, 3, 0), **STANDARD)
  assert small["input_ids"].shape[1] < STANDARD["length"] and small["span_mask"].shape[1] < STANDARD["num_spans"]
  hidden_large = _hidden(large)
  hidden_small = hidden_large[:2, :small["input_ids"].shape[1]]
  out_small = jax.jit(d2e2s.D2E2SHead(TINY).apply)({"params": params}, hidden_small, small)
  (_, _, out_large, _), _ = run(TINY, params, large)
  for key, mask in (("span_logits", "span_mask"), ("pair_logits", "pair_mask")):
    s = np.asarray(out_small[key])
    l = np.asarray(out_large[key])[:2, :s.shape[1]]
    real = small[mask]
    np.testing.assert_allclose(l[real], s[real], atol=1e-5, rtol=1e-5)


def test_deterministic_and_dropout(params):
  batch = make_batch(2, **STANDARD)
  first = run(TINY, params, batch, key=0)
  chex.assert_trees_all_equal(first, run(TINY, params, batch, key=1))
  dropped = run(TINY, params, batch, deterministic=False, key=1)[0][2]
  assert not np.allclose(first[0][2]["span_logits"], dropped["span_logits"])
  assert not np.allclose(first[0][2]["pair_logits"], dropped["pair_logits"])
  again = run(TINY, params, batch, deterministic=False, key=1)[0][2]
  chex.assert_trees_all_equal(dropped, again)


def _check_gradients(loss, grads, params):
  assert loss.dtype == jnp.float32 and np.isfinite(loss)
  leaves = jax.tree.leaves(grads)
  assert all(leaf.dtype == jnp.float32 and np.isfinite(leaf).all() for leaf in leaves)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0


def test_train_step_traces_once_per_shape_with_finite_gradients(params):
  """Padded batches (a padding row, short rows) of one shape trace once; grads are finite."""
  for seed in range(3):
    (loss, *_), grads = run(TINY, params, make_batch(seed, word_counts=(6, 2, 0), **STANDARD), False, seed)
    _check_gradients(loss, grads, params)
  bigger = dict(STANDARD, length=20)
  run(TINY, params, make_batch(5, word_counts=(4, 3, 0), **bigger), False)
  run(TINY, params, make_batch(6, word_counts=(5, 1, 0), **bigger), False)
  assert TRACES[(TINY, False, (3, 16, WIDTH))] == 1
  assert TRACES[(TINY, False, (3, 20, WIDTH))] == 1


def test_bfloat16_compute(params):
  batch = make_batch(4, **STANDARD)
  half_config = dataclasses.replace(TINY, dtype="bfloat16")
  (loss, _, half, intermediates), grads = run(half_config, params, batch)
  _check_gradients(loss, grads, params)
  assert intermediates["features"][0].dtype == jnp.bfloat16
  (_, _, full, _), _ = run(TINY, params, batch)
  real = batch["span_mask"]
  np.testing.assert_allclose(half["span_logits"][real], full["span_logits"][real], atol=0.15, rtol=0.05)


@pytest.mark.parametrize("differentiable", [False, True])
def test_kl_term_gradient_flag(params, differentiable):
  head = d2e2s.D2E2SHead(dataclasses.replace(TINY, kl_differentiable=differentiable))
  batch = make_batch(7, **STANDARD)
  kl_grad = jax.jit(jax.grad(lambda p: head.apply({"params": p}, _hidden(batch), batch)["kl_term"]))
  query_grad = np.abs(np.asarray(kl_grad(params)["sem_gcn"]["query"]["kernel"])).sum()
  assert (query_grad > 0) == differentiable


def test_kl_term_formula():
  rng = np.random.default_rng(8)
  p, k = rng.random((2, 4, 4)), (rng.random((2, 4, 4)) > 0.5).astype(np.float32)
  softmax = lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)
  kl = (softmax(k) * np.log(softmax(k) / softmax(p))).sum() + (softmax(p) * np.log(softmax(p) / softmax(k))).sum()
  np.testing.assert_allclose(d2e2s.kl_term(p, k), np.log(1 + 5 / abs(kl / 2)), rtol=1e-5)


def test_losses_match_plain_formulas():
  rng = np.random.default_rng(9)
  batch = make_batch(9, word_counts=(5, 4, 0))
  outputs = {"span_logits": rng.standard_normal(batch["span_mask"].shape + (3,)).astype(np.float32),
             "pair_logits": rng.standard_normal(batch["pair_mask"].shape + (4,)).astype(np.float32),
             "kl_term": np.float32(0.3)}
  total, parts = losses.d2e2s_loss(outputs, batch)
  logits, labels = outputs["span_logits"][batch["span_mask"]], batch["span_labels"][batch["span_mask"]]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  entity = -log_probs[np.arange(len(labels)), labels].mean()
  x, y = outputs["pair_logits"][batch["pair_mask"]], batch["pair_labels"][batch["pair_mask"]]
  sentiment = (np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean()
  np.testing.assert_allclose(parts["entity"], entity, rtol=1e-5)
  np.testing.assert_allclose(parts["sentiment"], sentiment, rtol=1e-5)
  np.testing.assert_allclose(total, entity + sentiment + 10 * 0.3, rtol=1e-5)
  assert parts["num_pairs"] == batch["pair_mask"].sum()
  # A padding row's spans and pairs do not count even if their masks say otherwise.
  batch["example_mask"][0] = False
  _, parts = losses.d2e2s_loss(outputs, batch)
  assert parts["num_spans"] == batch["span_mask"][1:].sum()


def test_batch_without_pairs_uses_entity_loss_alone(params):
  batch = make_batch(10, pairs_per_row=0, **STANDARD)
  assert not batch["pair_mask"].any()
  (total, parts, _, _), grads = run(TINY, params, batch)
  np.testing.assert_allclose(total, parts["entity"])
  assert parts["sentiment"] == 0
  _check_gradients(total, grads, params)


def test_predict_static_shapes(params):
  head = d2e2s.D2E2SHead(TINY)
  batch = make_batch(11, **STANDARD)
  decoded = jax.jit(lambda p, h, b: head.apply({"params": p}, h, b, method=d2e2s.D2E2SHead.predict))(
      params, _hidden(batch), batch)
  k = TINY.max_decoded_spans
  assert decoded["span_index"].shape == (3, k)
  assert decoded["sentiment_on"].shape == (3, k * (k - 1), 4)
  assert not np.asarray(decoded["span_valid"])[2].any()  # the padding row keeps nothing
  (_, _, out, _), _ = run(TINY, params, batch)
  np.testing.assert_allclose(decoded["span_logits"], out["span_logits"], atol=1e-6)


def test_batch_sharded_head_gathers_no_activations():
  """On a data-parallel mesh of 8 (fake CPU) devices the head's gathers stay per-sentence:
  the compiled training gradient and the decoding have no all-gather (before the gathers
  kept a batch dimension, the head's training step had a dozen). The one exception is
  decoding's `lax.top_k` over the [B, S] span scores, which XLA partitions by gathering."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.training import sharding  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh("data:8")
  head = d2e2s.D2E2SHead(TINY)
  batch = make_batch(12, word_counts=(5, 3, 4, 2, 6, 1, 0, 3), **STANDARD)
  hidden = _hidden(batch)
  params = head.init(jax.random.key(0), hidden, batch)["params"]
  rows, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
  batch = {key: jax.device_put(value, rows) for key, value in batch.items()}
  hidden = jax.device_put(hidden, rows)

  def loss(params, hidden, batch):
    return losses.d2e2s_loss(head.apply({"params": params}, hidden, batch), batch)[0]

  def decode(params, hidden, batch):
    return head.apply({"params": params}, hidden, batch, method=d2e2s.D2E2SHead.predict)

  for function in (jax.grad(loss, argnums=(0, 1)), decode):
    compiled = jax.jit(function, in_shardings=(replicated, rows, rows)).lower(params, hidden, batch).compile()
    gathers = [line for line in compiled.as_text().splitlines() if " all-gather(" in line or " all-gather-start(" in line]
    assert [line for line in gathers if "top_k" not in line] == [], function


@pytest.mark.parametrize("change, message", [
    (dict(hidden_dim=5), "2 \\* hidden_dim"),
    (dict(graph_implementation="sparse"), "graph_implementation"),
    (dict(dtype="float16"), "dtype"),
    (dict(attention_heads=3), "divisible"),
])
def test_config_validation(change, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(TINY, **change)
