"""The in-memory form of an ASTE example, shared by readers, writers, batching and scoring."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# Sentiment labels as the D2E2S JSON files spell them; the raw ASTE-V2 files abbreviate
# them (POS/NEG/NEU).
SENTIMENTS = ("POSITIVE", "NEGATIVE", "NEUTRAL")
ENTITY_TYPES = ("target", "opinion")

# The raw ASTE-V2 files abbreviate the sentiments.
SENTIMENT_ABBREVIATIONS = {"POSITIVE": "POS", "NEGATIVE": "NEG", "NEUTRAL": "NEU"}

# Relation given to a word that the source parse does not cover (its parser dropped or
# re-split the word); such a word hangs from ROOT, i.e. it has no syntactic edge.
UNPARSED_RELATION = "_"

Span = Tuple[int, int]  # word indices [start, end), end exclusive
# One source dependency entry: (relation, head, dependent), 1-based over the parse's own
# words, head 0 = ROOT, exactly as the D2E2S JSON stores it.
DependencyEntry = Tuple[str, int, int]


class DataError(ValueError):
  """A record in an input file is malformed. The message names the file and the record."""


@dataclasses.dataclass(frozen=True)
class Triplet:
  """One (aspect, opinion, sentiment) triplet over word spans."""

  aspect: Span
  opinion: Span
  sentiment: str  # one of SENTIMENTS


@dataclasses.dataclass(frozen=True)
class Example:
  """A tokenized sentence with its gold triplets and, when the source has one, its parse.

  The D2E2S JSON parses were made on the parser's own tokenization (`parse_words`, the
  words of its `pos` list), which differs from `tokens` in about a fifth of the
  sentences (dropped brackets and dashes, "8pm" split in two, a second sentence whose
  indices restart at 1). The source parse is kept verbatim (`dependency`, `parse_words`,
  `pos_tags`) for the released graph construction and for writing the file back;
  `heads`/`relations` are that parse re-aligned to `tokens` (see
  `d2e2s_jax.data.parses.word_level_parse`), which the correct graph construction uses.

  Attributes:
    id: stable identifier (the D2E2S `orig_id`, or `<file stem>:<line>` for raw files).
    tokens: the words.
    triplets: gold triplets (may be empty).
    pos_tags: one POS tag per parse word (`parse_words`), or None.
    heads: one 1-based head index per word of `tokens` (0 = ROOT or not covered by the
      parse), or None.
    relations: one dependency relation per word of `tokens`, or None.
    dependency: the source parse entries, verbatim, or None.
    parse_words: the words the source parse indexes, or None.
  """

  id: str
  tokens: Tuple[str, ...]
  triplets: Tuple[Triplet, ...] = ()
  pos_tags: Optional[Tuple[str, ...]] = None
  heads: Optional[Tuple[int, ...]] = None
  relations: Optional[Tuple[str, ...]] = None
  dependency: Optional[Tuple[DependencyEntry, ...]] = None
  parse_words: Optional[Tuple[str, ...]] = None

  @property
  def has_parse(self) -> bool:
    return self.heads is not None
