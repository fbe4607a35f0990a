"""The in-memory form of an ASTE example, shared by readers, writers, batching and scoring."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# The label vocabularies, defined here once; every other module imports them.
#
# Sentiments as the D2E2S JSON files spell them, in the released `types.json` order, and
# their abbreviations in the raw ASTE-V2 files.
SENTIMENT_ABBREVIATIONS = {"NEUTRAL": "NEU", "POSITIVE": "POS", "NEGATIVE": "NEG"}
SENTIMENTS = tuple(SENTIMENT_ABBREVIATIONS)
# The pair classifier's outputs (the `pair_labels` axis): `types.json`'s sentiments without
# the implicit None, as released. No triplet of the data is INVALID.
INVALID = "INVALID"
SENTIMENT_OUTPUTS = SENTIMENTS + (INVALID,)
# Entity types as the D2E2S JSON files spell them: a triplet's aspect is a `target`
# entity (the sentiment's head), its opinion an `opinion` entity (the tail).
TARGET, OPINION = "target", "opinion"
ENTITY_TYPES = (TARGET, OPINION)
# The span classifier's outputs (the `span_labels` ids): the implicit None, then the types.
NO_ENTITY = "None"
ENTITY_OUTPUTS = (NO_ENTITY,) + ENTITY_TYPES

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
  """One (aspect, opinion, sentiment) triplet over word spans.

  In gold data the aspect is a `target` span, the opinion an `opinion` span and the
  sentiment one of SENTIMENTS. A predicted triplet is (head span, tail span, sentiment)
  of the pair classifier: its spans may have any predicted type and its sentiment is one
  of SENTIMENT_OUTPUTS (an INVALID triplet can only be a false positive).
  """

  aspect: Span
  opinion: Span
  sentiment: str


@dataclasses.dataclass(frozen=True)
class Entity:
  """One typed span of a record, as a D2E2S JSON file's `entities` list holds it.

  Attributes:
    type: one of ENTITY_TYPES.
    span: word indices [start, end).
  """

  type: str
  span: Span


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
    triplets: gold or predicted triplets (may be empty).
    pos_tags: one POS tag per parse word (`parse_words`), or None.
    heads: one 1-based head index per word of `tokens` (0 = ROOT or not covered by the
      parse), or None.
    relations: one dependency relation per word of `tokens`, or None.
    dependency: the source parse entries, verbatim, or None.
    parse_words: the words the source parse indexes, or None.
    entities: the record's typed spans in file order, or None. Predictions
      (`readers.read_predictions`) always set it: every span the model typed target or
      opinion, in a triplet or not, and the aspect and opinion term scores count these.
      Gold examples (`readers.read_examples`) leave it None: their terms are their
      triplets' spans (the benchmark files have no entity outside a triplet).
    triplet_scores: one score in [0, 1] per triplet (aligned with `triplets`), or None. An
      example without triplets has None (an empty tuple is stored as None).
  """

  id: str
  tokens: Tuple[str, ...]
  triplets: Tuple[Triplet, ...] = ()
  pos_tags: Optional[Tuple[str, ...]] = None
  heads: Optional[Tuple[int, ...]] = None
  relations: Optional[Tuple[str, ...]] = None
  dependency: Optional[Tuple[DependencyEntry, ...]] = None
  parse_words: Optional[Tuple[str, ...]] = None
  entities: Optional[Tuple[Entity, ...]] = None
  triplet_scores: Optional[Tuple[float, ...]] = None

  def __post_init__(self):
    if self.triplet_scores is not None:
      if len(self.triplet_scores) != len(self.triplets):
        raise ValueError(f"example {self.id}: {len(self.triplet_scores)} triplet scores for "
                         f"{len(self.triplets)} triplets")
      if not self.triplet_scores:
        object.__setattr__(self, "triplet_scores", None)

  @property
  def has_parse(self) -> bool:
    return self.heads is not None
