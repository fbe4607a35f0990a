"""Fetches the ASTE datasets in the D2E2S JSON format from their public home.

The D2E2S authors publish ASTE-Data-V2 with dependency parses in their repository
(github.com/TYZY89/D2E2S, folder `data/`, MIT licence):

  data/types.json
  data/<dataset>/<split>_dep_triple_polarity_result.json   (split: train, dev, test)

`download_aste_data` mirrors that folder as `<data root>/aste/`, the layout of the
project's benchmark copy (`../shared/data/aste/...`) that `readers.dataset_paths`
expects, and the layout `ensure_dataset` accepts for a user-supplied `--data_dir` too:

  <data root>/aste/types.json
  <data root>/aste/<dataset>/<split>_dep_triple_polarity_result.json
 Only the standard library
is used (urllib), so the downloader adds no dependency. Each file is written to a
temporary name and renamed once complete and parsed, so an interrupted download never
leaves a truncated file that a later run would take for a good one; files already
present are kept and not fetched again.
"""

from __future__ import annotations

import json
import os
import pathlib
import urllib.error
import urllib.request
from typing import List, Optional, Union

from d2e2s_jax import fileio

# `HEAD` makes raw.githubusercontent.com serve the default branch, whatever it is named.
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/TYZY89/D2E2S/HEAD/data"
DATASETS = ("14lap", "14res", "15res", "16res")
SPLITS = ("train", "dev", "test")
TYPES_FILE = "types.json"
# Local sub-folder of the data root that mirrors the remote `data/` folder.
ASTE_SUBDIR = "aste"

PathLike = Union[str, os.PathLike]


class DownloadError(RuntimeError):
  """A dataset file could not be fetched; the one-line message names the URL."""


def split_file(dataset: str, split: str) -> str:
  """The path of one split relative to the data root, e.g. `14res/dev_dep_...json`."""
  return f"{dataset}/{split}_dep_triple_polarity_result.json"


def dataset_files(dataset: str) -> List[str]:
  """The paths, relative to the remote `data/` folder (and to `<data root>/aste`), of a dataset.

  Raises:
    ValueError: `dataset` is not one of DATASETS.
  """
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
  return [TYPES_FILE] + [split_file(dataset, split) for split in SPLITS]


def _offline_hint(dataset: str) -> str:
  return (f"without internet access, copy the files elsewhere and pass --data_dir=DIR, a folder "
          f"holding {ASTE_SUBDIR}/{TYPES_FILE} and "
          f"{ASTE_SUBDIR}/{dataset}/<train|dev|test>_dep_triple_polarity_result.json")


def _check_downloaded_json(path: pathlib.Path, relative_path: str, url: str) -> None:
  """Rejects a body that is not the expected JSON (an HTML error page, a cut-off file)."""
  try:
    with open(path, encoding="utf-8") as stream:
      content = json.load(stream)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise DownloadError(f"{url}: the downloaded file is not valid JSON ({error})") from None
  if relative_path == TYPES_FILE:
    if not (isinstance(content, dict) and "entities" in content and "sentiment" in content):
      raise DownloadError(f"{url}: expected an object with 'entities' and 'sentiment'")
  elif not isinstance(content, list):
    raise DownloadError(f"{url}: expected a JSON list of records, got {type(content).__name__}")


def _fetch(url: str, destination: pathlib.Path, relative_path: str, dataset: str, timeout_s: float) -> None:
  """Downloads `url` to `destination` atomically: a `.part` file beside it, checked, renamed."""

  def download(temporary: str) -> None:
    with open(temporary, "wb") as output:
      try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
          while chunk := response.read(1 << 20):
            output.write(chunk)
      except urllib.error.HTTPError as error:
        raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
      except (urllib.error.URLError, TimeoutError) as error:
        # No route, refused connection, DNS failure or a stalled server: most often offline.
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"cannot download {url}: {reason}; {_offline_hint(dataset)}") from None
      except OSError as error:
        raise DownloadError(f"cannot download {url} to {destination}: {error}") from None
    _check_downloaded_json(pathlib.Path(temporary), relative_path, url)

  fileio.write_atomic(destination, download, suffix=".part")


def download_aste_data(
    dataset: str,
    output_dir: PathLike,
    *,
    base_url: str = DEFAULT_BASE_URL,
    timeout_s: float = 60.0,
) -> pathlib.Path:
  """Downloads one dataset's `types.json` and train/dev/test files under `output_dir`.

  Args:
    dataset: one of DATASETS (`14lap`, `14res`, `15res`, `16res`).
    output_dir: the data root; files land at `output_dir/aste/types.json` and
      `output_dir/aste/<dataset>/<split>_dep_triple_polarity_result.json`.
    base_url: the URL of the remote data root (a local server in tests).
    timeout_s: socket timeout of each request.

  Returns:
    `output_dir` as a path (the data root for `readers.dataset_paths`).

  Raises:
    ValueError: unknown dataset.
    DownloadError: a file is unreachable or not the expected JSON. Files completed
      before the failure are kept; no partial file is left behind.
  """
  output_root = pathlib.Path(output_dir)
  for relative_path in dataset_files(dataset):
    destination = output_root / ASTE_SUBDIR / relative_path
    if destination.is_file():
      continue
    _fetch(f"{base_url.rstrip('/')}/{relative_path}", destination, relative_path, dataset, timeout_s)
  return output_root


def missing_files(data_dir: PathLike, dataset: str) -> List[str]:
  """The files of `dataset` that the data root `data_dir` lacks, relative to it (empty when complete)."""
  root = pathlib.Path(data_dir)
  relative_paths = [f"{ASTE_SUBDIR}/{relative_path}" for relative_path in dataset_files(dataset)]
  return [relative_path for relative_path in relative_paths if not (root / relative_path).is_file()]


def ensure_dataset(
    data_dir: Optional[PathLike],
    dataset: str,
    cache_dir: PathLike,
    *,
    base_url: str = DEFAULT_BASE_URL,
    timeout_s: float = 60.0,
) -> pathlib.Path:
  """Returns a data root holding `dataset`, downloading it only when none was given.

  Args:
    data_dir: a user-supplied data root (layout as in `download_aste_data`), or None to
      use `cache_dir`, downloading whatever it lacks.
    dataset: one of DATASETS.
    cache_dir: where downloads go when `data_dir` is None.
    base_url: the URL of the remote data root.
    timeout_s: socket timeout of each request.

  Returns:
    The data root: `data_dir` when given, else `cache_dir`.

  Raises:
    FileNotFoundError: `data_dir` was given but lacks some of the dataset's files (a
      user who names a folder wants that folder, so nothing is downloaded into it).
    DownloadError: the download failed.
  """
  if data_dir is not None:
    missing = missing_files(data_dir, dataset)
    if missing:
      raise FileNotFoundError(
          f"{data_dir}: missing {', '.join(missing)}; expected {ASTE_SUBDIR}/{TYPES_FILE} and "
          f"{ASTE_SUBDIR}/{dataset}/<split>_dep_triple_polarity_result.json for train, dev and test")
    return pathlib.Path(data_dir)
  return download_aste_data(dataset, cache_dir, base_url=base_url, timeout_s=timeout_s)
