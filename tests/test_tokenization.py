"""Tests of d2e2s_jax.tokenization: training a small SentencePiece tokenizer and loading it."""

import pathlib

import pytest
import sentencepiece
import transformers

from d2e2s_jax import tokenization

SENTENCES = [
    "The pizza was great but the service was slow .",
    "I loved the battery life of this laptop !",
    "Screen is dim , keyboard is fine and the trackpad works well .",
    "The waiter brought cold soup and a warm beer .",
    "Their sushi is fresh , the rolls are creative and the prices are fair .",
    "Boot time is quick ; the fan gets loud under load .",
] * 3


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  return tokenization.train_sentencepiece_tokenizer(SENTENCES, tmp_path_factory.mktemp("tok"), vocab_size=120)


def test_writes_the_released_layout(tokenizer_dir):
  names = {path.name for path in pathlib.Path(tokenizer_dir).iterdir()}
  assert {"spm.model", "tokenizer.json", "tokenizer_config.json"} <= names


@pytest.mark.parametrize("loader", ["load_tokenizer", "DebertaV2Tokenizer", "AutoTokenizer"])
def test_special_token_ids(tokenizer_dir, loader):
  if loader == "load_tokenizer":
    tokenizer = tokenization.load_tokenizer(tokenizer_dir)
  else:
    tokenizer = getattr(transformers, loader).from_pretrained(str(tokenizer_dir))
  assert isinstance(tokenizer, transformers.DebertaV2Tokenizer)
  assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id,
          tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
  assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
  ids = tokenizer("the pizza")["input_ids"]
  assert ids[0] == 1 and ids[-1] == 2 and len(ids) > 2


def test_agrees_with_sentencepiece_and_round_trips(tokenizer_dir):
  tokenizer = tokenization.load_tokenizer(tokenizer_dir)
  processor = sentencepiece.SentencePieceProcessor(model_file=str(pathlib.Path(tokenizer_dir) / "spm.model"))
  for sentence in SENTENCES[:6]:
    ids = tokenizer.encode(sentence, add_special_tokens=False)
    assert ids == processor.encode(sentence)
    assert 3 not in ids, f"[UNK] in a training sentence: {sentence}"
    assert tokenizer.decode(ids) == sentence
  # Characters never seen in training map to [UNK]; the mask token is never split.
  assert 3 in tokenizer.encode("zebra \u00e9clair", add_special_tokens=False)
  assert tokenizer.encode("the [MASK] was", add_special_tokens=False).count(4) == 1


def test_word_by_word_encoding_as_the_pipeline_does(tokenizer_dir):
  tokenizer = tokenization.load_tokenizer(tokenizer_dir)
  for word in SENTENCES[0].split():
    pieces = tokenizer.encode(word, add_special_tokens=False)
    assert pieces and all(piece >= 5 for piece in pieces)
    assert tokenizer.decode(pieces) == word


def test_training_is_deterministic(tokenizer_dir, tmp_path):
  again = tokenization.train_sentencepiece_tokenizer(SENTENCES, tmp_path, vocab_size=120)
  for name in ("spm.model", "tokenizer.json", "tokenizer_config.json"):
    assert (pathlib.Path(again) / name).read_bytes() == (pathlib.Path(tokenizer_dir) / name).read_bytes(), name
  other = tokenization.train_sentencepiece_tokenizer(SENTENCES[:4], tmp_path / "other", vocab_size=120)
  assert (pathlib.Path(other) / "spm.model").read_bytes() != (pathlib.Path(tokenizer_dir) / "spm.model").read_bytes()


def test_vocab_size_is_an_upper_bound(tmp_path):
  tokenizer = tokenization.load_tokenizer(tokenization.train_sentencepiece_tokenizer(SENTENCES, tmp_path,
                                                                                     vocab_size=60))
  assert 10 < len(tokenizer) <= 60


def test_lower_case(tmp_path):
  tokenizer = tokenization.load_tokenizer(
      tokenization.train_sentencepiece_tokenizer(SENTENCES, tmp_path, vocab_size=120, do_lower_case=True))
  assert tokenizer.encode("THE PIZZA", add_special_tokens=False) == tokenizer.encode("the pizza",
                                                                                      add_special_tokens=False)


@pytest.mark.parametrize("sentences, vocab_size, message", [
    ([], 100, "no non-blank sentence"),
    (["  ", ""], 100, "no non-blank sentence"),
    (SENTENCES, 5, "vocab_size 5"),
])
def test_bad_training_input(tmp_path, sentences, vocab_size, message):
  with pytest.raises(ValueError, match=message):
    tokenization.train_sentencepiece_tokenizer(sentences, tmp_path, vocab_size=vocab_size)


def test_missing_directory_and_offline_hub(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    tokenization.load_tokenizer(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="no tokenizer here"):
    tokenization.load_tokenizer(tmp_path)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match=r"d2e2s-jax-tests/no-such-tokenizer: .*offline"):
    tokenization.load_tokenizer("d2e2s-jax-tests/no-such-tokenizer")
