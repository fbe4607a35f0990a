"""Sub-token encoding of a sentence and its word -> piece ranges.

As in the released reader (docs/d2e2s-reference.md, "Encoding a sentence"): `[CLS]`, then
every word encoded on its own with `tokenizer.encode(word, add_special_tokens=False)`,
then `[SEP]`. The `[CLS]`/`[SEP]`/`[UNK]` ids come from the tokenizer (`cls_token_id`,
`sep_token_id`, `unk_token_id`), never from constants, so any `transformers` tokenizer
works (DeBERTa-v2/v3 SentencePiece, BERT WordPiece, ...). Two deliberate differences
from the released code:

* a word that encodes to no piece (an empty string, a lone control character) gets one
  `[UNK]` piece, so every word has a position and every span a non-empty pool (the
  released code gives it an empty range, and a span of such words pools nothing);
* a sentence longer than `max_length` pieces is refused with a DataError naming the
  example (`on_overflow="error"`), or cut after the last word that fits
  (`on_overflow="truncate"`), dropping and counting the gold triplets whose spans no
  longer fit. The released code has no limit and fails inside the encoder.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from d2e2s_jax.data.examples import DataError, Example, Triplet

OVERFLOW_POLICIES = ("error", "truncate")


@dataclasses.dataclass(frozen=True)
class EncodedExample:
  """A sentence as the model sees it.

  Attributes:
    example: the source example (all its words and triplets).
    index: position of the example in its dataset (becomes `example_index` in a batch).
    input_ids: int32 [L]: `[CLS]`, the pieces of the kept words, `[SEP]`.
    word_piece_bounds: int32 [num_words, 2]: each kept word's pieces as positions
      [start, end) into `input_ids` (so the first word starts at 1).
    triplets: the gold triplets whose spans lie within the kept words.
    dropped_triplets: how many gold triplets truncation removed.
  """

  example: Example
  index: int
  input_ids: np.ndarray
  word_piece_bounds: np.ndarray
  triplets: Tuple[Triplet, ...]
  dropped_triplets: int = 0

  @property
  def num_words(self) -> int:
    """Number of words kept (all of them unless truncated)."""
    return int(self.word_piece_bounds.shape[0])

  @property
  def num_pieces(self) -> int:
    """Sequence length including `[CLS]` and `[SEP]`."""
    return int(self.input_ids.shape[0])

  @property
  def truncated(self) -> bool:
    return self.num_words < len(self.example.tokens)


def special_token_ids(tokenizer: Any) -> Tuple[int, int, int]:
  """(cls, sep, unk) ids of a tokenizer; raises ValueError if it lacks one."""
  ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id)
  if any(token_id is None for token_id in ids):
    raise ValueError(f"tokenizer {type(tokenizer).__name__} lacks a cls, sep or unk token (ids {ids})")
  return tuple(int(token_id) for token_id in ids)


class WordEncoder:
  """Encodes words one at a time, caching each distinct word (datasets repeat words)."""

  def __init__(self, tokenizer: Any):
    self.tokenizer = tokenizer
    self.cls_id, self.sep_id, self.unk_id = special_token_ids(tokenizer)
    self._cache: Dict[str, List[int]] = {}

  def __call__(self, word: str) -> List[int]:
    pieces = self._cache.get(word)
    if pieces is None:
      pieces = list(self.tokenizer.encode(word, add_special_tokens=False)) or [self.unk_id]
      self._cache[word] = pieces
    return pieces


def encode_example(example: Example, tokenizer: Any, *, max_length: int, on_overflow: str = "error",
                   index: int = 0) -> EncodedExample:
  """Encodes one example.

  Args:
    example: the sentence.
    tokenizer: a `transformers` tokenizer, or a `WordEncoder` wrapping one (reuses its
      cache across calls).
    max_length: the most pieces allowed, `[CLS]` and `[SEP]` included.
    on_overflow: "error" (DataError) or "truncate" (keep the longest prefix of words that
      fits; gold triplets reaching past it are dropped and counted).
    index: the example's position in its dataset.

  Returns:
    The EncodedExample.

  Raises:
    DataError: the sentence does not fit and on_overflow is "error", or not even its
      first word fits.
  """
  if on_overflow not in OVERFLOW_POLICIES:
    raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
  encoder = tokenizer if isinstance(tokenizer, WordEncoder) else WordEncoder(tokenizer)
  ids = [encoder.cls_id]
  bounds = []
  for word in example.tokens:
    pieces = encoder(word)
    bounds.append((len(ids), len(ids) + len(pieces)))
    ids.extend(pieces)
  ids.append(encoder.sep_id)
  triplets = example.triplets
  dropped = 0
  if len(ids) > max_length:
    if on_overflow == "error":
      raise DataError(f"example {index} ({example.id}): {len(ids)} pieces exceed max_length {max_length}; "
                      f"raise max_length or pass on_overflow='truncate'")
    kept_words = sum(1 for _, end in bounds if end + 1 <= max_length)
    if kept_words == 0:
      raise DataError(f"example {index} ({example.id}): its first word alone exceeds max_length {max_length}")
    bounds = bounds[:kept_words]
    ids = ids[:bounds[-1][1]] + [encoder.sep_id]
    triplets = tuple(t for t in example.triplets if t.aspect[1] <= kept_words and t.opinion[1] <= kept_words)
    dropped = len(example.triplets) - len(triplets)
  return EncodedExample(example=example, index=index, input_ids=np.asarray(ids, dtype=np.int32),
                        word_piece_bounds=np.asarray(bounds, dtype=np.int32).reshape(-1, 2), triplets=triplets,
                        dropped_triplets=dropped)


def encode_examples(examples: Sequence[Example], tokenizer: Any, *, max_length: int,
                    on_overflow: str = "error") -> List[EncodedExample]:
  """Encodes a dataset (example i gets index i); logs what truncation removed."""
  encoder = tokenizer if isinstance(tokenizer, WordEncoder) else WordEncoder(tokenizer)
  encoded = [encode_example(example, encoder, max_length=max_length, on_overflow=on_overflow, index=index)
             for index, example in enumerate(examples)]
  truncated = [item for item in encoded if item.truncated]
  if truncated:
    logging.warning("truncated %d of %d sentences to %d pieces, dropping %d gold triplet(s)", len(truncated),
                    len(encoded), max_length, sum(item.dropped_triplets for item in truncated))
  return encoded


def word_span_to_token_bounds(word_piece_bounds: np.ndarray, start: int, end: int) -> Tuple[int, int]:
  """Sub-token positions [start, end) covering exactly the pieces of words [start, end)."""
  return int(word_piece_bounds[start, 0]), int(word_piece_bounds[end - 1, 1])
