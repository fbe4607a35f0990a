"""The syntactic graph of a sentence over its sub-token positions.

Two constructions (docs/d2e2s-reference.md, "Encoding a sentence"), both returning the
edge list of an undirected graph with self-loops, each directed edge once (so the dense
adjacency is binary):

* `sentence_edges` (the default): an edge between words a and b (from the word-level
  parse, `Example.heads`) connects every piece of a with every piece of b; the pieces of
  one word are connected to each other; `[CLS]`, `[SEP]` and words outside the parse
  have only self-loops.
* `released_edges`: the released reader's construction, reproduced for published
  numbers. It takes the source parse verbatim (`Example.dependency`, indexed over the
  parser's own words), and, walking the words in order, adds n-1 to every index greater
  than i+1 (0-based word i with n > 1 pieces, comparing with the *unshifted* i+1), skips
  the first entry (assumed ROOT), sets A[h-1, d-1] for each other entry, symmetrizes and
  adds the identity. Its known mistakes, kept on purpose: every edge lands one position
  early (word k's first piece is at position k, the row used is k-1, so the first word
  is the `[CLS]` row); the shift compares with the unshifted word index, so after a
  multi-piece word the edges drift further; a word is one position, not all its pieces;
  a second ROOT entry (head 0) indexes row -1, which numpy wraps to the last position
  (`[SEP]`); parse indices that do not match the words (the parse's own tokenization)
  are used as they are. Two deliberate differences: an index past the matrix (where
  the released code raises IndexError) drops that edge, and an entry present in both
  directions yields one edge, not the weight 2 of `A + A.T`.

The batch carries the edges as `graph_senders`, `graph_receivers` and `graph_edge_mask`
(WORKSPACE.md); the model reads them as `models.gcn.SyntacticEdges`, which builds the
dense adjacency or the `jraph.GraphsTuple` inside jit.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np

from d2e2s_jax.data.examples import DependencyEntry

Edges = Tuple[np.ndarray, np.ndarray]  # (senders, receivers), int32 [E]


def _edges_from_pairs(pairs: np.ndarray, num_positions: int) -> Edges:
  """Symmetrizes directed (sender, receiver) pairs, adds self-loops, deduplicates."""
  loops = np.arange(num_positions, dtype=np.int64)
  pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
  senders = np.concatenate([pairs[:, 0], pairs[:, 1], loops])
  receivers = np.concatenate([pairs[:, 1], pairs[:, 0], loops])
  # Unique on a flat key keeps the edges sorted by (sender, receiver).
  keys = np.unique(senders * num_positions + receivers)
  return (keys // num_positions).astype(np.int32), (keys % num_positions).astype(np.int32)


def sentence_edges(word_piece_bounds: np.ndarray, heads: Optional[Sequence[int]], num_positions: int) -> Edges:
  """The port's graph: dependency edges between all pieces of the two words.

  Args:
    word_piece_bounds: int [num_words, 2], each word's pieces [start, end).
    heads: 1-based head per word (0 = ROOT), at least num_words of them; None for a
      sentence without a parse (only the within-word edges and self-loops remain).
      Heads pointing past the kept (possibly truncated) words are dropped.
    num_positions: the sequence length including `[CLS]`/`[SEP]`.

  Returns:
    (senders, receivers), int32, sorted, both directions and self-loops, each once.
  """
  num_words = word_piece_bounds.shape[0]
  # Word-level adjacency (each word with itself, and with its head), spread to pieces
  # through the piece x word membership matrix: A = M W M^T.
  word_adjacency = np.eye(num_words, dtype=np.int32)
  if heads is not None:
    dependents = np.arange(num_words)
    head_index = np.asarray(heads[:num_words], dtype=np.int64) - 1
    inside = (head_index >= 0) & (head_index < num_words)
    word_adjacency[head_index[inside], dependents[inside]] = 1
    word_adjacency[dependents[inside], head_index[inside]] = 1
  positions = np.arange(num_positions)[:, None]
  membership = ((positions >= word_piece_bounds[None, :, 0]) & (positions < word_piece_bounds[None, :, 1]))
  membership = membership.astype(np.int32)
  adjacency = (membership @ word_adjacency @ membership.T) > 0
  adjacency |= np.eye(num_positions, dtype=bool)
  senders, receivers = np.nonzero(adjacency)
  return senders.astype(np.int32), receivers.astype(np.int32)


def released_edges(pieces_per_word: Sequence[int], dependency: Optional[Sequence[DependencyEntry]],
                   num_positions: int, where: str = "") -> Edges:
  """The released code's graph (see the module docstring for its known mistakes).

  Args:
    pieces_per_word: number of pieces of each word, in order.
    dependency: the source parse entries verbatim; None gives self-loops only.
    num_positions: the sequence length including `[CLS]`/`[SEP]`.
    where: names the example in the warning about dropped out-of-range edges.

  Returns:
    (senders, receivers) as in `sentence_edges`.
  """
  if dependency is None:
    return _edges_from_pairs(np.zeros((0, 2)), num_positions)
  entries = [[head, dependent] for _, head, dependent in dependency]
  for word, count in enumerate(pieces_per_word):
    if count > 1:
      # Like the released loop, the first entry is never shifted and the comparison
      # uses the word's original 1-based index.
      for entry in entries[1:]:
        entry[0] += count - 1 if entry[0] > word + 1 else 0
        entry[1] += count - 1 if entry[1] > word + 1 else 0
  pairs, dropped = [], 0
  for head, dependent in entries[1:]:
    row, column = head - 1, dependent - 1
    if row >= num_positions or column >= num_positions:
      dropped += 1
      continue
    # numpy's negative indexing in the released code: row -1 is the last position.
    pairs.append((row % num_positions, column % num_positions))
  if dropped:
    logging.warning("%s: released graph construction dropped %d edge(s) past %d positions", where, dropped,
                    num_positions)
  return _edges_from_pairs(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), num_positions)
