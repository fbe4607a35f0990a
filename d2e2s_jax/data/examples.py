"""The in-memory form of an ASTE example, shared by readers, writers, batching and scoring."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# Sentiment labels as the D2E2S JSON files spell them; the raw ASTE-V2 files abbreviate
# them (POS/NEG/NEU).
SENTIMENTS = ("POSITIVE", "NEGATIVE", "NEUTRAL")
ENTITY_TYPES = ("target", "opinion")

Span = Tuple[int, int]  # word indices [start, end), end exclusive


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

  Attributes:
    id: stable identifier (the D2E2S `orig_id`, or `<file stem>:<line>` for raw files).
    tokens: the words.
    triplets: gold triplets (may be empty).
    pos_tags: one POS tag per word, or None.
    heads: one 1-based head index per word (0 = ROOT), or None.
    relations: one dependency relation per word, or None.
  """

  id: str
  tokens: Tuple[str, ...]
  triplets: Tuple[Triplet, ...] = ()
  pos_tags: Optional[Tuple[str, ...]] = None
  heads: Optional[Tuple[int, ...]] = None
  relations: Optional[Tuple[str, ...]] = None

  @property
  def has_parse(self) -> bool:
    return self.heads is not None
