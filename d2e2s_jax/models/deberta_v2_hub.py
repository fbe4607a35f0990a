"""Resolving a pretrained DeBERTa name or path to a local directory.

Both the encoder (`deberta_v2_convert.read_pretrained`) and the tokenizer
(`tokenization.load_tokenizer`) accept either a local directory or a Hugging Face hub
name such as `microsoft/deberta-v3-base`. This module turns either into a local
directory: a directory is returned as is; a hub name goes through
`huggingface_hub.snapshot_download`, which reuses the local cache and downloads only
when online. Offline (`HF_HUB_OFFLINE=1`, read at call time so tests and notebooks can
switch it) with nothing cached, the error is one line naming the model.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence, Union

PathLike = Union[str, os.PathLike]

_TRUE_STRINGS = ("1", "true", "yes", "on")


def hub_offline() -> bool:
  """Whether the Hugging Face hub is switched off by the environment, read now.

  `huggingface_hub` reads `HF_HUB_OFFLINE` once at import time; reading it here at call
  time lets a process switch to offline after the import.
  """
  for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    if os.environ.get(variable, "").strip().lower() in _TRUE_STRINGS:
      return True
  return False


def resolve_pretrained_directory(name_or_path: PathLike, allow_patterns: Sequence[str]) -> pathlib.Path:
  """Returns a local directory holding a pretrained model's files.

  Args:
    name_or_path: a local directory, or a hub repository id (`owner/name`).
    allow_patterns: glob patterns of the files to fetch from the hub (ignored for a
      local directory).

  Returns:
    The local directory.

  Raises:
    FileNotFoundError: `name_or_path` looks like a path but is not a directory, or it is
      a hub name that is neither cached nor downloadable (offline, unknown repository,
      no network). The message is one line.
  """
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  text = str(name_or_path)
  # A hub id has at most one '/', and no leading '/', '.', or '~'; anything else is a
  # local path that does not exist, which deserves the plainer message.
  looks_like_path = path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1 or not text
  if looks_like_path:
    raise FileNotFoundError(f"{text}: not a directory (expected a local model directory or a hub name 'owner/name')")
  import huggingface_hub  # pylint: disable=g-import-not-at-top  # only needed for hub names
  from huggingface_hub import errors as hub_errors  # pylint: disable=g-import-not-at-top

  offline = hub_offline()
  try:
    local = huggingface_hub.snapshot_download(text, allow_patterns=list(allow_patterns), local_files_only=offline)
  except (hub_errors.LocalEntryNotFoundError, hub_errors.HfHubHTTPError, OSError, ValueError) as error:
    reason = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline else (
        f"could not be downloaded or found in the local cache ({type(error).__name__})")
    raise FileNotFoundError(f"{text}: no such local directory, and the hub model {reason}") from error
  return pathlib.Path(local)
