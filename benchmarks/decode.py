"""Host cost of decoding and scoring one evaluation batch, beside the device's decoding of it.

The prediction path (`d2e2s_jax.prediction`) fetches the jitted predict step's output,
turns it into one `SentencePrediction` per sentence on the host and, in evaluation,
scores them. With k = 24 kept spans a sentence has k * (k - 1) = 552 ordered pairs x 4
sentiment outputs; early in training the model turns on nearly all of them. This
benchmark times that host work on batches of realistic shape (B = 16 sentences of 14-23
words, every span of up to 6 words a candidate, S = 128 padded candidates as in the
middle 14res eval buckets), produced on the device by the real `decoding.decode` under
jit, in three regimes:

* `unselective`: every candidate passes and every sentiment output is on (an untrained
  model: sigmoid(~0) = 0.5 >= 0.4);
* `typical`: half the candidates pass (k kept) and 3% of the outputs are on;
* `trained`: 5% of the candidates pass and 1% of their outputs are on (about one
  triplet per sentence).

The reference of the same run is the device: `device_decode`, the jitted decoding of the
batch (`decoding.decode`: span selection, pair scoring, thresholds) until its outputs are
ready. It is the decoding part of a predict step; the encoder and the head's features,
which this benchmark replaces by span logits and a pair logit table, come on top of it in
a real one (`train_step.py`'s `decode_over_predict` sets the host cost beside a whole
predict step). Measured pieces, interleaved repetition by repetition (medians,
milliseconds per batch):

* `eval`: the whole host cost of one eval batch, as evaluation pays it:
  `decoding.fetch_host_outputs`, `decoding.host_predictions` and `prediction.score`
  (`TripletScorer.add_codes`);
* `predictions`: `host_predictions` alone, on fetched arrays;
* `sets`: `host_predictions` and the `Triplet` and term sets of every real row
  (`SentencePrediction.triplets` / `terms`, what prediction files and the `Predictor` build);
* `fetch`: the device -> host copy alone; every timed fetch reads a fresh output of the
  jitted decoding (a fetched jax array caches its value).

`<piece>_over_device_decode` is the piece's time over `device_decode_ms` in the same
run. On a CPU backend the fetch is a host copy; on an accelerator it is a transfer, so
run it there for that part.

  python benchmarks/decode.py
  python benchmarks/decode.py --repeats 3 --batch 4 --spans 32 --k 6 --json   # quick

`--json` prints one JSON object with the figures as the last line of output.

The per-row Python loops that this path replaced (issue 7) were timed against it here
until issue 11; README keeps those figures with their commit (7c37ba8), and the git
history the loops.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from typing import Any, Callable, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from d2e2s_jax import prediction, settings  # pylint: disable=wrong-import-position
from d2e2s_jax.data.examples import SENTIMENTS, Example, Triplet  # pylint: disable=wrong-import-position
from d2e2s_jax.models import decoding  # pylint: disable=wrong-import-position

# name -> (fraction of real candidates whose argmax is not None, fraction of sentiment outputs on).
REGIMES = {"unselective": (1.0, 1.0), "typical": (0.5, 0.03), "trained": (0.05, 0.01)}
THRESHOLD = settings.Settings.sen_filter_threshold
MAX_SPAN_SIZE = settings.Settings.max_span_size
# The host's pieces, each timed beside the device's decoding of the same batch.
HOST_PIECES = ("eval", "predictions", "sets", "fetch")


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated subset of {list(REGIMES)}")
  parser.add_argument("--repeats", type=int, default=15, help="timed repetitions of each measurement")
  parser.add_argument("--batch", type=int, default=16, help="sentences per eval batch")
  parser.add_argument("--spans", type=int, default=128, help="padded span candidates per sentence (S)")
  parser.add_argument("--k", type=int, default=settings.Settings.max_decoded_spans, help="max_decoded_spans")
  parser.add_argument("--min_words", type=int, default=14)
  parser.add_argument("--max_words", type=int, default=23)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
  args = parser.parse_args(argv)
  args.regimes = [name.strip() for name in args.regimes.split(",") if name.strip()]
  unknown = [name for name in args.regimes if name not in REGIMES]
  if unknown or not args.regimes:
    parser.error(f"--regimes must name some of {list(REGIMES)}, got {unknown or 'none'}")
  if args.repeats < 1 or args.batch < 1 or args.k < 2 or args.spans < 1 or not 1 <= args.min_words <= args.max_words:
    parser.error("--repeats, --batch, --spans must be >= 1, --k >= 2 and 1 <= --min_words <= --max_words")
  return args


# ------------------------------------------------------------------- the host path


def host_eval(output, batch, gold: Sequence[Example]) -> Dict[str, Dict[str, float]]:
  """The host cost of one eval batch: fetch, `SentencePrediction`s, scores of the real rows."""
  decoded = decoding.fetch_host_outputs(output)
  predictions = decoding.host_predictions(decoded, batch["span_mask"], batch["span_word_bounds"])
  rows = np.nonzero(batch["example_mask"])[0]
  return prediction.score([gold[row] for row in rows], [predictions[row] for row in rows])


def host_sets(decoded, batch) -> List[Any]:
  """The `Triplet` sets and term sets of the real rows (prediction files)."""
  predictions = decoding.host_predictions(decoded, batch["span_mask"], batch["span_word_bounds"])
  return [(predictions[row].triplets(), predictions[row].terms()) for row in np.nonzero(batch["example_mask"])[0]]


# ------------------------------------------------------------------- inputs


def make_batch(args: argparse.Namespace, regime: str, rng: np.random.Generator):
  """Eval-batch arrays, span logits and a pair logit table for one regime, and the gold examples."""
  batch_size, spans = args.batch, args.spans
  bounds = np.zeros((batch_size, spans, 2), np.int32)
  bounds[..., 1] = 1  # padding candidates: [0, 1)
  span_mask = np.zeros((batch_size, spans), bool)
  gold: List[Example] = []
  for row in range(batch_size):
    words = int(rng.integers(args.min_words, args.max_words + 1))
    candidates = [(start, start + size) for size in range(1, MAX_SPAN_SIZE + 1)
                  for start in range(words - size + 1)][:spans]
    bounds[row, :len(candidates)] = candidates
    span_mask[row, :len(candidates)] = True
    picks = rng.integers(0, len(candidates), (int(rng.integers(1, 4)), 2))
    triplets = tuple(Triplet(candidates[a], candidates[o], SENTIMENTS[int(rng.integers(len(SENTIMENTS)))])
                     for a, o in picks)
    gold.append(Example(id=f"{regime}:{row}", tokens=("word",) * words, triplets=triplets))
  span_pass, output_on = REGIMES[regime]
  span_logits = rng.standard_normal((batch_size, spans, 3)).astype(np.float32)
  span_logits[..., 0] = np.where(rng.random((batch_size, spans)) < span_pass, -4.0, 4.0)
  pair_table = np.where(rng.random((batch_size, spans, spans, 4)) < output_on, 3.0, -3.0).astype(np.float32)
  batch = {"span_word_bounds": bounds, "span_mask": span_mask, "example_mask": np.ones(batch_size, bool)}
  return batch, span_logits, pair_table, gold


@functools.lru_cache(maxsize=None)
def jitted_decode(max_spans: int) -> Callable[..., Dict[str, jax.Array]]:
  @jax.jit
  def run(span_logits, span_mask, pair_table):
    rows = jnp.arange(span_logits.shape[0])[:, None]
    score_pairs = lambda idx: pair_table[rows, idx[..., 0], idx[..., 1]]
    return decoding.decode(span_logits, span_mask, score_pairs, max_spans, THRESHOLD)
  return run


def run_regime(regime: str, args: argparse.Namespace) -> Dict[str, Any]:
  rng = np.random.default_rng([args.seed, list(REGIMES).index(regime)])
  batch, span_logits, pair_table, gold = make_batch(args, regime, rng)
  decode = jitted_decode(args.k)
  inputs = (jnp.asarray(span_logits), jnp.asarray(batch["span_mask"]), jnp.asarray(pair_table))

  # Fresh device outputs for every timed call that fetches (a fetched array caches its value).
  fresh = collections.deque(jax.block_until_ready(decode(*inputs)) for _ in range(2 * args.repeats + 1))
  fetched = decoding.fetch_host_outputs(fresh.popleft())

  measurements = {
      "device_decode": lambda: jax.block_until_ready(decode(*inputs)),
      "eval": lambda: host_eval(fresh.popleft(), batch, gold),
      "predictions": lambda: decoding.host_predictions(fetched, batch["span_mask"], batch["span_word_bounds"]),
      "sets": lambda: host_sets(fetched, batch),
      "fetch": lambda: decoding.fetch_host_outputs(fresh.popleft()),
  }
  seconds = common.interleaved(measurements, args.repeats)
  figures: Dict[str, Any] = {f"{name}_ms": 1000.0 * common.median(values) for name, values in seconds.items()}
  for piece in HOST_PIECES:
    figures[f"{piece}_over_device_decode"] = figures[f"{piece}_ms"] / figures["device_decode_ms"]
  figures["on_outputs_per_batch"] = int(fetched["sentiment_on"].sum())
  figures["triplets_per_batch"] = sum(len(triplets) for triplets, _ in host_sets(fetched, batch))
  figures["candidates_per_batch"] = int(batch["span_mask"].sum())
  return figures


def main(argv: List[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  figures: Dict[str, Any] = {"batch": args.batch, "spans": args.spans, "k": args.k, "pairs": args.k * (args.k - 1),
                             "repeats": args.repeats, "cpu_count": os.cpu_count(),
                             "backend": jax.default_backend(), "regimes": {}}
  for regime in args.regimes:
    common.log(f"[{regime}] ...")
    figures["regimes"][regime] = run_regime(regime, args)
  print(f"Host decoding + scoring of one eval batch ({args.batch} sentences, S = {args.spans}, k = {args.k}, "
        f"{args.k * (args.k - 1)} pairs x 4 outputs), {args.repeats} interleaved repeats (median), "
        f"backend {figures['backend']}, {os.cpu_count()} CPUs; ms per batch, and over the device's decoding")
  for regime, values in figures["regimes"].items():
    print(f"  {regime:11s} ({values['on_outputs_per_batch']:6d} outputs on, {values['triplets_per_batch']:6d} triplets)"
          f"  device_decode {values['device_decode_ms']:8.3f}")
    for piece in HOST_PIECES:
      print(f"    {piece:11s} {values[f'{piece}_ms']:9.3f}   {values[f'{piece}_over_device_decode']:7.2f}x")
  if args.json:
    common.emit(figures, as_json=True)
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
