"""DeBERTa-v2/v3 tokenizers: loading pretrained ones, training small ones for tests.

`load_tokenizer` loads the SentencePiece tokenizer of any DeBERTa-v2/v3 checkpoint
(a local directory or a hub name) through `transformers.DebertaV2Tokenizer`.

`train_sentencepiece_tokenizer` trains a small unigram SentencePiece model on given
sentences and writes a directory in the layout of the released DeBERTa-v3 tokenizers,
so the rest of the code (and `transformers.DebertaV2Tokenizer.from_pretrained`) cannot
tell it from a real one. It exists so that tests and smoke runs work offline with a
vocabulary of a few hundred pieces instead of the 128k-piece pretrained one. The special
tokens take the ids of the released DeBERTa-v3 vocabulary, except `[MASK]`, which the
released one appends at the end of its 128k pieces and this one places right after them:

  [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK] 4.

The directory holds `spm.model` (the SentencePiece model itself, readable by the
`sentencepiece` library), `tokenizer.json` (the same model in the `tokenizers` format,
which `transformers` loads without converting) and `tokenizer_config.json`.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from typing import Any, Iterable, Union

from d2e2s_jax.models import deberta_v2_hub

PathLike = Union[str, os.PathLike]

PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN = "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"
SPECIAL_TOKEN_IDS = {PAD_TOKEN: 0, CLS_TOKEN: 1, SEP_TOKEN: 2, UNK_TOKEN: 3, MASK_TOKEN: 4}

# Files a hub snapshot needs for the tokenizer alone (not the multi-GB weights).
_TOKENIZER_FILE_PATTERNS = ("spm.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                            "added_tokens.json", "config.json")


def load_tokenizer(name_or_path: PathLike) -> Any:
  """Loads a DeBERTa-v2/v3 tokenizer.

  Args:
    name_or_path: a directory with `spm.model` and/or `tokenizer.json` (as the released
      checkpoints and `train_sentencepiece_tokenizer` write them), or a hub name such as
      `microsoft/deberta-v3-base` (downloaded when online, else read from the cache).

  Returns:
    A `transformers.DebertaV2Tokenizer`.

  Raises:
    FileNotFoundError: the directory or hub model does not exist, or holds no tokenizer.
  """
  directory = deberta_v2_hub.resolve_pretrained_directory(name_or_path, _TOKENIZER_FILE_PATTERNS)
  if not ((directory / "spm.model").is_file() or (directory / "tokenizer.json").is_file()):
    raise FileNotFoundError(f"{directory}: no tokenizer here (expected spm.model or tokenizer.json)")
  import transformers  # pylint: disable=g-import-not-at-top  # heavy; only needed here
  return transformers.DebertaV2Tokenizer.from_pretrained(str(directory))


def train_sentencepiece_tokenizer(sentences: Iterable[str],
                                  output_dir: PathLike,
                                  vocab_size: int = 512,
                                  do_lower_case: bool = False,
                                  character_coverage: float = 1.0) -> pathlib.Path:
  """Trains a small unigram SentencePiece tokenizer and writes a DeBERTa tokenizer directory.

  The training is deterministic: one thread, no input sampling or shuffling, so the same
  sentences give byte-identical files.

  Args:
    sentences: the training text, one sentence per item (words separated by spaces).
    output_dir: directory to write (created if needed; existing tokenizer files in it are
      overwritten).
    vocab_size: the largest vocabulary size, special tokens included. A small corpus may
      yield fewer pieces; training does not fail on that (SentencePiece's
      `hard_vocab_limit=False`), since tests feed a handful of sentences.
    do_lower_case: lowercase the input before tokenizing (recorded in the config, applied
      by `transformers`); the released DeBERTa-v3 tokenizers do not.
    character_coverage: fraction of characters the vocabulary must cover; 1.0 keeps every
      character seen, so nothing in the training text maps to `[UNK]`.

  Returns:
    The output directory.

  Raises:
    ValueError: no non-blank sentence, or `vocab_size` too small for the special tokens.
  """
  import sentencepiece  # pylint: disable=g-import-not-at-top  # only needed for training

  texts = [sentence.lower() if do_lower_case else sentence for sentence in sentences]
  texts = [text for text in texts if text.strip()]
  if not texts:
    raise ValueError("train_sentencepiece_tokenizer: no non-blank sentence to train on")
  if vocab_size <= len(SPECIAL_TOKEN_IDS):
    raise ValueError(f"train_sentencepiece_tokenizer: vocab_size {vocab_size} leaves no room beside the "
                     f"{len(SPECIAL_TOKEN_IDS)} special tokens")
  model_bytes = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=model_bytes,
      model_type="unigram",
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      character_coverage=character_coverage,
      pad_id=SPECIAL_TOKEN_IDS[PAD_TOKEN], pad_piece=PAD_TOKEN,
      bos_id=SPECIAL_TOKEN_IDS[CLS_TOKEN], bos_piece=CLS_TOKEN,
      eos_id=SPECIAL_TOKEN_IDS[SEP_TOKEN], eos_piece=SEP_TOKEN,
      unk_id=SPECIAL_TOKEN_IDS[UNK_TOKEN], unk_piece=UNK_TOKEN,
      # A user-defined symbol takes the first free id (4) and is never split.
      user_defined_symbols=[MASK_TOKEN],
      # Determinism: one thread, read every sentence, keep the input order.
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      minloglevel=2,
  )
  directory = pathlib.Path(output_dir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "spm.model").write_bytes(model_bytes.getvalue())
  config = {
      "tokenizer_class": "DebertaV2Tokenizer",
      "do_lower_case": do_lower_case,
      "split_by_punct": False,
      "vocab_type": "spm",
      "bos_token": CLS_TOKEN,
      "eos_token": SEP_TOKEN,
      "cls_token": CLS_TOKEN,
      "sep_token": SEP_TOKEN,
      "unk_token": UNK_TOKEN,
      "pad_token": PAD_TOKEN,
      "mask_token": MASK_TOKEN,
  }
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  # Let transformers convert spm.model once and store the result as tokenizer.json, so
  # later loads skip the protobuf conversion. A stale tokenizer.json from an earlier
  # run would take precedence over the new spm.model, hence the removal first.
  (directory / "tokenizer.json").unlink(missing_ok=True)
  import transformers  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.DebertaV2Tokenizer.from_pretrained(str(directory))
  for token, expected_id in SPECIAL_TOKEN_IDS.items():
    if tokenizer.convert_tokens_to_ids(token) != expected_id:
      raise RuntimeError(f"{directory}: {token} got id {tokenizer.convert_tokens_to_ids(token)}, expected "
                         f"{expected_id}; the SentencePiece trainer changed its id assignment")
  tokenizer.save_pretrained(str(directory))
  return directory
