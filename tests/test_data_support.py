"""Shared builders and checks for the data-pipeline tests (no tests here).

A WordPiece `transformers.BertTokenizer` over a hand-written vocabulary gives exact,
readable multi-piece words; its special tokens sit at unusual ids so a hard-coded
`[CLS]` = 101 or 1 would be caught.
"""

from typing import Sequence

import transformers

from d2e2s_jax.data.examples import Example, Triplet

# Special tokens deliberately not at the ids BERT (0/100/101/102) or DeBERTa (0..3) use.
WORDPIECE_VOCAB = ["the", "[PAD]", "food", "[UNK]", "was", "[SEP]", "[CLS]", "st", "##aff", "hor", "##ri", "##ble",
                   "great", "but", "service", "slow", "and", "very", "good", ".", ",", "not", "a", "b", "c", "##d",
                   "pizza", "is", "[MASK]"]
WORDPIECE_IDS = {token: index for index, token in enumerate(WORDPIECE_VOCAB)}


def wordpiece_tokenizer() -> transformers.BertTokenizer:
  """A lower-casing WordPiece tokenizer over WORDPIECE_VOCAB."""
  return transformers.BertTokenizer(vocab=dict(WORDPIECE_IDS))


def staff_example() -> Example:
  """"the staff was horrible": words of 1, 2, 1 and 3 pieces, one triplet, a parse."""
  return Example(id="staff", tokens=("the", "staff", "was", "horrible"),
                 triplets=(Triplet((1, 2), (3, 4), "NEGATIVE"),),
                 pos_tags=("DT", "NN", "VBD", "JJ"), heads=(2, 4, 4, 0), relations=("det", "nsubj", "cop", "root"),
                 dependency=(("root", 0, 4), ("det", 2, 1), ("nsubj", 4, 2), ("cop", 4, 3)),
                 parse_words=("the", "staff", "was", "horrible"))


def validate_heads(heads: Sequence[int], where: str = "") -> None:
  """Asserts that word-level heads (1-based, 0 = ROOT) are in range and form a forest."""
  num_words = len(heads)
  for word, head in enumerate(heads, start=1):
    assert type(head) is int and 0 <= head <= num_words and head != word, (
        f"{where}: word {word} has head {head!r}, expected 0..{num_words} and not itself")
  for start in range(1, num_words + 1):
    seen, word = set(), start
    while word != 0:
      assert word not in seen, f"{where}: the heads form a cycle through word {word}"
      seen.add(word)
      word = heads[word - 1]
