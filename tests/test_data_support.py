"""Shared builders and checks for the data-pipeline tests (no tests here).

A WordPiece `transformers.BertTokenizer` over a hand-written vocabulary gives exact,
readable multi-piece words; its special tokens sit at unusual ids so a hard-coded
`[CLS]` = 101 or 1 would be caught.
"""

from typing import List, Sequence

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


def compare_datasets(first: Sequence[Example], second: Sequence[Example]) -> List[str]:
  """Lists where two versions of one dataset (same sentence order) disagree.

  Compares sentence by sentence the words and the triplets (as sets; ids and parses are
  ignored). Used to check that the raw and JSON benchmark files agree and to report the
  sentences whose tokenization differs instead of merging them silently.

  Returns:
    One line per difference, naming both example ids; empty when they agree.
  """
  differences = []
  if len(first) != len(second):
    differences.append(f"different sizes: {len(first)} vs {len(second)} sentences")
  for index, (left, right) in enumerate(zip(first, second)):
    if left.tokens != right.tokens:
      changed = [position for position in range(max(len(left.tokens), len(right.tokens)))
                 if left.tokens[position:position + 1] != right.tokens[position:position + 1]]
      differences.append(f"sentence {index} ({left.id} / {right.id}): tokens differ from word {changed[0]} "
                         f"({len(left.tokens)} vs {len(right.tokens)} words)")
    if set(left.triplets) != set(right.triplets):
      differences.append(f"sentence {index} ({left.id} / {right.id}): triplets differ: "
                         f"{sorted(set(left.triplets) ^ set(right.triplets), key=repr)}")
  return differences
