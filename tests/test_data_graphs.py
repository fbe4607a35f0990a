"""Tests for d2e2s_jax.data.graphs: both graph constructions and the jit-side helpers."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2e2s_jax.data import graphs
from d2e2s_jax.data.jraph_compat import jraph
from tests.test_data_support import staff_example

# "the staff was horrible": [CLS] 0, the 1, staff 2-3, was 4, horrible 5-7, [SEP] 8.
STAFF_BOUNDS = np.array([[1, 2], [2, 4], [4, 5], [5, 8]])
STAFF_PIECES = [1, 2, 1, 3]


def _dense(edges, size):
  return graphs.edges_to_dense(*edges, size)


def _undirected(size, pairs):
  adjacency = np.eye(size, dtype=np.float32)
  for first, second in pairs:
    adjacency[first, second] = adjacency[second, first] = 1
  return adjacency


def test_port_graph_connects_all_pieces_of_related_words():
  example = staff_example()
  edges = graphs.sentence_edges(STAFF_BOUNDS, example.heads, 9)
  expected = _undirected(9, [
      (2, 3), (5, 6), (5, 7), (6, 7),  # pieces of one word
      (1, 2), (1, 3),  # the <- staff
      (2, 5), (2, 6), (2, 7), (3, 5), (3, 6), (3, 7),  # staff <- horrible
      (4, 5), (4, 6), (4, 7),  # was <- horrible
  ])
  np.testing.assert_array_equal(_dense(edges, 9), expected)
  # [CLS] and [SEP] have only their self-loops; each edge appears once.
  assert len(edges[0]) == int(expected.sum())
  assert len(set(zip(*edges))) == len(edges[0])


def test_port_graph_without_parse_keeps_words_and_self_loops():
  edges = graphs.sentence_edges(STAFF_BOUNDS, None, 9)
  np.testing.assert_array_equal(_dense(edges, 9), _undirected(9, [(2, 3), (5, 6), (5, 7), (6, 7)]))


def test_released_graph_reproduces_the_released_mistakes():
  edges = graphs.released_edges(STAFF_PIECES, staff_example().dependency, 9)
  # Worked by hand from the reference page: "staff" (word 1, 2 pieces) adds 1 to indices
  # > 2: (4,2) -> (5,2), (4,3) -> (5,4); "horrible" (word 3, 3 pieces) adds 2 to indices
  # > 4: (5,2) -> (7,2), (5,4) -> (7,4). The ROOT entry is skipped, then A[h-1, d-1]:
  # the -> [CLS] (1,0), horrible's second piece -> "the" (6,1) and -> "was"'s position 3,
  # which is the second piece of "staff". None of the port's edges.
  np.testing.assert_array_equal(_dense(edges, 9), _undirected(9, [(1, 0), (6, 1), (6, 3)]))


def test_released_graph_wraps_a_second_root_and_drops_indices_past_the_matrix():
  dependency = (("ROOT", 0, 2), ("det", 2, 1), ("ROOT", 0, 3), ("dep", 9, 1))
  edges = graphs.released_edges([1, 1, 1], dependency, 5)
  # (2,1) -> A[1,0]; a second ROOT (0,3) -> A[-1,2] = A[4,2] ([SEP]); (9,1) is past 5 rows.
  np.testing.assert_array_equal(_dense(edges, 5), _undirected(5, [(1, 0), (4, 2)]))
  assert np.array_equal(_dense(graphs.released_edges([1, 1, 1], None, 5), 5), np.eye(5))


def _released_reference(pieces, dependency, size):
  """The reference page's algorithm, written independently with a dense matrix."""
  entries = [list(entry) for entry in dependency]
  for word, count in enumerate(pieces):
    if count > 1:
      for entry in entries[1:]:
        for position in (1, 2):
          if entry[position] > word + 1:
            entry[position] += count - 1
  adjacency = np.zeros((size, size))
  for _, head, dependent in entries[1:]:
    if head - 1 < size and dependent - 1 < size:
      adjacency[head - 1, dependent - 1] = 1
  return np.minimum(adjacency + adjacency.T + np.eye(size), 1)


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(data=st.data())
def test_released_graph_matches_the_reference_algorithm(data):
  pieces = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=8))
  num_words = len(pieces)
  # A random tree: word i+1 (1-based) hangs from an earlier word or ROOT.
  heads = [0] + [data.draw(st.integers(1, word)) for word in range(1, num_words)]
  dependency = [("ROOT", 0, 1)] + [("dep", heads[word], word + 1) for word in range(1, num_words)]
  size = sum(pieces) + 2
  np.testing.assert_array_equal(_dense(graphs.released_edges(pieces, dependency, size), size),
                                _released_reference(pieces, dependency, size))


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(data=st.data())
def test_port_graph_matches_its_definition(data):
  pieces = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=8))
  heads = [data.draw(st.integers(0, len(pieces))) for _ in pieces]
  starts = np.cumsum([1] + pieces[:-1])
  bounds = np.stack([starts, starts + np.asarray(pieces)], axis=1)
  size = sum(pieces) + 2
  word_of = {position: word for word, (start, end) in enumerate(bounds) for position in range(start, end)}
  expected = np.eye(size)
  for first in word_of:
    for second in word_of:
      a, b = word_of[first], word_of[second]
      if a == b or heads[a] == b + 1 or heads[b] == a + 1:
        expected[first, second] = 1
  edges = graphs.sentence_edges(bounds, heads, size)
  np.testing.assert_array_equal(_dense(edges, size), expected)
  assert len(edges[0]) == int(expected.sum())


def _batch_edges():
  """Two sentences' port graphs padded to E edges, as batching lays them out."""
  staff = graphs.sentence_edges(STAFF_BOUNDS, staff_example().heads, 9)
  short = graphs.sentence_edges(np.array([[1, 2], [2, 3]]), (0, 1), 4)
  num_edges, seq_len = 48, 12
  senders = np.zeros((3, num_edges), np.int32)
  receivers = np.zeros((3, num_edges), np.int32)
  mask = np.zeros((3, num_edges), bool)
  for row, (row_senders, row_receivers) in enumerate([staff, short]):
    senders[row, :len(row_senders)] = row_senders
    receivers[row, :len(row_receivers)] = row_receivers
    mask[row, :len(row_senders)] = True
  dense = np.zeros((3, seq_len, seq_len), np.float32)
  dense[0, :9, :9] = _dense(staff, 9)
  dense[1, :4, :4] = _dense(short, 4)
  return senders, receivers, mask, seq_len, dense


def test_dense_adjacency_inside_jit():
  senders, receivers, mask, seq_len, expected = _batch_edges()
  adjacency = jax.jit(graphs.dense_adjacency, static_argnums=3)(senders, receivers, mask, seq_len)
  assert adjacency.shape == (3, seq_len, seq_len) and adjacency.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(adjacency), expected)


def test_graphs_tuple_message_passing_equals_the_dense_product():
  senders, receivers, mask, seq_len, dense = _batch_edges()
  features = np.random.default_rng(0).normal(size=(3, seq_len, 5)).astype(np.float32)

  @jax.jit
  def aggregate(senders, receivers, mask, features):
    graph = graphs.batch_graphs_tuple(senders, receivers, mask, seq_len, features)
    messages = graph.nodes[graph.senders]
    summed = jax.ops.segment_sum(messages, graph.receivers, num_segments=graph.nodes.shape[0])
    return graph, summed

  graph, summed = aggregate(senders, receivers, mask, features)
  assert graph.n_node.tolist() == [seq_len, seq_len, seq_len, 1]
  assert graph.n_edge.tolist() == [int(mask[0].sum()), int(mask[1].sum()), 0, mask.size - int(mask.sum())]
  # Undirected graph: sum over senders into receivers is A @ X.
  expected = np.einsum("bij,bjd->bid", dense, features).reshape(-1, 5)
  np.testing.assert_allclose(np.asarray(summed[:-1]), expected, rtol=1e-6, atol=1e-6)
  # jraph's padding helpers (through the compatibility shim) see the padding graph.
  edge_padding = np.asarray(jraph.get_edge_padding_mask(graph))
  assert edge_padding.sum() == mask.sum()
  zeroed = jraph.zero_out_padding(graph._replace(nodes=graph.nodes.at[-1].set(7.0)))
  assert float(jnp.abs(zeroed.nodes[-1]).sum()) == 0.0
  np.testing.assert_array_equal(np.asarray(zeroed.nodes[:-1]), features.reshape(-1, 5))


@pytest.mark.parametrize("name", ["tree_map", "tree_leaves"])
def test_jraph_compat_restores_the_removed_jax_aliases(name):
  assert getattr(jax, name) is getattr(jax.tree_util, name)
