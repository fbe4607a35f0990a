"""Shared builders for the data-pipeline tests (no tests here).

A WordPiece `transformers.BertTokenizer` over a hand-written vocabulary gives exact,
readable multi-piece words; its special tokens sit at unusual ids so a hard-coded
`[CLS]` = 101 or 1 would be caught.
"""

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
