"""Downloads an ASTE dataset in the D2E2S JSON format from the D2E2S authors' repository.

  python third_party/download.py --dataset=14res --output=DIR

Writes DIR/aste/types.json and DIR/aste/14res/{train,dev,test}_dep_triple_polarity_result.json
(the layout `--data_dir` expects, as in ../shared/data), skipping files already there. Without internet access
it fails with one line saying how to pass --data_dir instead, and exits with status 1.
"""

import pathlib
import sys
from typing import Sequence

try:
  from d2e2s_jax.data import download
except ImportError:
  # Run as a script from a checkout that is not pip-installed: `python third_party/...`
  # puts third_party/, not the repository root, on sys.path.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from d2e2s_jax.data import download

from absl import app
from absl import flags

_DATASET = flags.DEFINE_enum("dataset", None, download.DATASETS, "Which ASTE dataset.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Data root to download into.", required=True)
_BASE_URL = flags.DEFINE_string("base_url", download.DEFAULT_BASE_URL, "URL of the remote data root.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 60.0, "Socket timeout per request, in seconds.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    root = download.download_aste_data(_DATASET.value, _OUTPUT.value, base_url=_BASE_URL.value,
                                       timeout_s=_TIMEOUT.value)
  except (download.DownloadError, OSError) as error:
    # OSError: the output folder cannot be created or written; its message names the path.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  for relative_path in download.dataset_files(_DATASET.value):
    print(root / download.ASTE_SUBDIR / relative_path)


if __name__ == "__main__":
  app.run(main)
