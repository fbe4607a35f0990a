"""Tests for d2e2s_jax.data.encoding: pieces, word -> piece ranges, overflow handling."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from d2e2s_jax import tokenization
from d2e2s_jax.data import encoding
from d2e2s_jax.data.examples import DataError, Example, Triplet
from tests.test_data_support import WORDPIECE_IDS, staff_example, wordpiece_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
  return wordpiece_tokenizer()


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
  sentences = ["the staff was horrible", "the food was great but the service was slow",
               "a very good pizza , not a horrible one ."]
  directory = tokenization.train_sentencepiece_tokenizer(sentences, tmp_path_factory.mktemp("spm"), vocab_size=60)
  return tokenization.load_tokenizer(directory)


def test_pieces_and_ranges_follow_the_tokenizer(tokenizer):
  encoded = encoding.encode_example(staff_example(), tokenizer, max_length=32, index=7)
  ids = WORDPIECE_IDS
  assert encoded.input_ids.tolist() == [ids["[CLS]"], ids["the"], ids["st"], ids["##aff"], ids["was"], ids["hor"],
                                        ids["##ri"], ids["##ble"], ids["[SEP]"]]
  assert encoded.word_piece_bounds.tolist() == [[1, 2], [2, 4], [4, 5], [5, 8]]
  assert encoded.input_ids.dtype == np.int32 and encoded.index == 7
  assert encoded.triplets == staff_example().triplets and not encoded.truncated


@pytest.mark.parametrize("word", ["", "\u200b"])
def test_a_word_without_pieces_gets_one_unk(tokenizer, word):
  example = Example(id="empty", tokens=("the", word, "food"))
  encoded = encoding.encode_example(example, tokenizer, max_length=16)
  assert tokenizer.encode(word, add_special_tokens=False) == []
  assert encoded.input_ids.tolist()[1:4] == [WORDPIECE_IDS["the"], WORDPIECE_IDS["[UNK]"], WORDPIECE_IDS["food"]]
  assert encoded.word_piece_bounds.tolist() == [[1, 2], [2, 3], [3, 4]]


def test_overflow_raises_a_clear_error(tokenizer):
  with pytest.raises(DataError, match=r"example 3 \(staff\): 9 pieces exceed max_length 8"):
    encoding.encode_example(staff_example(), tokenizer, max_length=8, index=3)


def test_overflow_truncation_drops_words_and_the_triplets_past_the_cut(tokenizer):
  example = Example(id="cut", tokens=("the", "food", "was", "horrible", "the", "staff", "was", "great"),
                    triplets=(Triplet((1, 2), (3, 4), "NEGATIVE"), Triplet((5, 6), (7, 8), "POSITIVE")))
  encoded = encoding.encode_example(example, tokenizer, max_length=9, on_overflow="truncate")
  # [CLS] the food was hor ##ri ##ble the [SEP]: the fifth word is the last that fits.
  assert encoded.num_words == 5 and encoded.num_pieces == 9
  assert encoded.input_ids[-1] == WORDPIECE_IDS["[SEP]"]
  assert encoded.triplets == (example.triplets[0],) and encoded.dropped_triplets == 1 and encoded.truncated
  with pytest.raises(DataError, match="first word alone"):
    encoding.encode_example(example, tokenizer, max_length=2, on_overflow="truncate")
  with pytest.raises(ValueError, match="on_overflow"):
    encoding.encode_example(example, tokenizer, max_length=9, on_overflow="drop")


def test_encode_examples_numbers_the_dataset(tokenizer):
  encoded = encoding.encode_examples([staff_example(), Example(id="b", tokens=("good",))], tokenizer, max_length=16)
  assert [item.index for item in encoded] == [0, 1]


def test_tokenizer_without_special_tokens_is_refused():
  class NoCls:
    cls_token_id, sep_token_id, unk_token_id = None, 2, 3
  with pytest.raises(ValueError, match="lacks a cls"):
    encoding.special_token_ids(NoCls())


def test_sentencepiece_tokenizer_special_ids_come_from_it(sentencepiece_tokenizer):
  encoded = encoding.encode_example(staff_example(), sentencepiece_tokenizer, max_length=64)
  assert encoded.input_ids[0] == sentencepiece_tokenizer.cls_token_id
  assert encoded.input_ids[-1] == sentencepiece_tokenizer.sep_token_id
  for word, (start, end) in zip(staff_example().tokens, encoded.word_piece_bounds):
    assert encoded.input_ids[start:end].tolist() == sentencepiece_tokenizer.encode(word, add_special_tokens=False)


_WORDS = st.sampled_from(["the", "staff", "horrible", "was", "", "zzz", "abcd", "pizza", "."])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(words=st.lists(_WORDS, min_size=1, max_size=12))
def test_ranges_tile_the_pieces_exactly(tokenizer, words):
  encoded = encoding.encode_example(Example(id="h", tokens=tuple(words)), tokenizer, max_length=64)
  bounds = encoded.word_piece_bounds
  # Consecutive, non-empty, from position 1 to the position of [SEP].
  assert bounds[0, 0] == 1 and bounds[-1, 1] == encoded.num_pieces - 1
  assert np.all(bounds[:, 1] > bounds[:, 0]) and np.all(bounds[1:, 0] == bounds[:-1, 1])
  for word, (start, end) in zip(words, bounds):
    expected = tokenizer.encode(word, add_special_tokens=False) or [tokenizer.unk_token_id]
    assert encoded.input_ids[start:end].tolist() == expected
  for start_word in range(len(words)):
    for end_word in range(start_word + 1, len(words) + 1):
      token_start, token_end = encoding.word_span_to_token_bounds(bounds, start_word, end_word)
      assert (token_start, token_end) == (bounds[start_word, 0], bounds[end_word - 1, 1])
