"""Tests for d2e2s_jax.data.graphs: both graph constructions (and the jraph shim)."""

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from d2e2s_jax.data import graphs
from d2e2s_jax.data import jraph_compat  # pylint: disable=unused-import  # restores the aliases tested last
from tests.test_data_support import staff_example

# "the staff was horrible": [CLS] 0, the 1, staff 2-3, was 4, horrible 5-7, [SEP] 8.
STAFF_BOUNDS = np.array([[1, 2], [2, 4], [4, 5], [5, 8]])
STAFF_PIECES = [1, 2, 1, 3]


def _dense(edges, size):
  """The binary [size, size] adjacency of one sentence's (senders, receivers)."""
  adjacency = np.zeros((size, size), np.float32)
  adjacency[edges[0], edges[1]] = 1.0
  return adjacency


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


@pytest.mark.parametrize("name", ["tree_map", "tree_leaves"])
def test_jraph_compat_restores_the_removed_jax_aliases(name):
  assert getattr(jax, name) is getattr(jax.tree_util, name)
