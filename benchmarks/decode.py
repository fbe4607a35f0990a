"""Host cost of decoding and scoring one evaluation batch: ours against the old Python loop.

`trainer.evaluate` fetches the jitted `predict_step`'s output, turns it into triplets and
term spans on the host and scores them. With k = 24 kept spans a sentence has
k * (k - 1) = 552 ordered pairs x 4 sentiment outputs; early in training the model turns
on nearly all of them. This benchmark times that host work on batches of realistic
shape (B = 16 sentences of 14-23 words, every span of up to 6 words a candidate, S = 128
padded candidates as in the middle 14res eval buckets), produced on the device by the
real `decoding.decode` under jit, in three regimes:

* `unselective`: every candidate passes and every sentiment output is on (an untrained
  model: sigmoid(~0) = 0.5 >= 0.4);
* `typical`: half the candidates pass (k kept) and 3% of the outputs are on;
* `trained`: 5% of the candidates pass and 1% of their outputs are on (about one
  triplet per sentence).

The reference is the code as it was before issue 7, copied here: `jax.device_get` of
the whole output dict, the per-row Python loops of `decoded_triplets` / `decoded_terms`,
and `TripletScorer.add` with the resulting sets. Measured pieces, each ours and the
reference, interleaved repetition by repetition (medians, milliseconds per batch):

* `eval`: the whole host cost of one eval batch (fetch + triplets + terms + scorer),
  as `trainer.evaluate` pays it (ours: `fetch_host_outputs`, `triplet_codes`,
  `term_codes`, `TripletScorer.add_codes`);
* `sets`: the conversion of fetched arrays to `Triplet` sets and term span sets alone
  (ours: `decoded_triplets` / `decoded_terms`, what `trainer.predict_examples` returns);
* `fetch`: the device -> host copy alone (whole dict vs `HOST_KEYS`); every timed fetch
  reads a fresh output of the jitted decoding (a fetched jax array caches its value).

`*_speedup` is reference time / our time in the same run. Before timing, the benchmark
checks that both sides give the same sets and the same scores. On a CPU backend the
fetch is a host copy; on an accelerator it is a transfer, so run it there for that part.

  python benchmarks/decode.py
  python benchmarks/decode.py --repeats 3 --batch 4 --spans 32 --k 6 --json   # quick

`--json` prints one JSON object with the figures as the last line of output.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from d2e2s_jax import evaluation  # pylint: disable=wrong-import-position
from d2e2s_jax.data.examples import Triplet  # pylint: disable=wrong-import-position
from d2e2s_jax.models import decoding  # pylint: disable=wrong-import-position

# name -> (fraction of real candidates whose argmax is not None, fraction of sentiment outputs on).
REGIMES = {"unselective": (1.0, 1.0), "typical": (0.5, 0.03), "trained": (0.05, 0.01)}
THRESHOLD = 0.4  # D2E2SConfig.sen_filter_threshold
MAX_SPAN_SIZE = 6


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated subset of {list(REGIMES)}")
  parser.add_argument("--repeats", type=int, default=15, help="timed repetitions of each measurement")
  parser.add_argument("--batch", type=int, default=16, help="sentences per eval batch")
  parser.add_argument("--spans", type=int, default=128, help="padded span candidates per sentence (S)")
  parser.add_argument("--k", type=int, default=24, help="max_decoded_spans")
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


# ------------------------------------------------------------- the reference
# Copied from d2e2s_jax/models/decoding.py and d2e2s_jax/training/trainer.py before issue 7.


def reference_decoded_triplets(decoded, span_word_bounds, keep_invalid=True):
  pair_indices = np.asarray(decoded["pair_indices"])
  sentiment_on = np.asarray(decoded["sentiment_on"])
  bounds = np.asarray(span_word_bounds)
  results = []
  for row in range(sentiment_on.shape[0]):
    triplets = set()
    for pair, output in zip(*np.nonzero(sentiment_on[row])):
      sentiment = decoding.SENTIMENT_OUTPUTS[output]
      if sentiment == "INVALID" and not keep_invalid:
        continue
      head, tail = pair_indices[row, pair]
      triplets.add(Triplet(aspect=tuple(int(x) for x in bounds[row, head]),
                           opinion=tuple(int(x) for x in bounds[row, tail]), sentiment=sentiment))
    results.append(triplets)
  return results


def reference_decoded_terms(decoded, span_mask, span_word_bounds):
  span_type = np.argmax(np.asarray(decoded["span_probs"]), axis=-1)
  mask = np.asarray(span_mask, bool)
  bounds = np.asarray(span_word_bounds)
  results = []
  for row in range(span_type.shape[0]):
    spans = (set(), set())
    for candidate in np.nonzero(mask[row] & (span_type[row] != 0))[0]:
      spans[span_type[row, candidate] - 1].add(tuple(int(x) for x in bounds[row, candidate]))
    results.append(tuple(spans))
  return results


def reference_eval(output, batch, gold) -> evaluation.TripletScorer:
  """The old host cost of one eval batch: full fetch, Python loops, `TripletScorer.add`."""
  decoded = jax.device_get(output)
  triplet_sets = reference_decoded_triplets(decoded, batch["span_word_bounds"])
  terms = reference_decoded_terms(decoded, batch["span_mask"], batch["span_word_bounds"])
  scorer = evaluation.TripletScorer()
  for row in np.nonzero(batch["example_mask"])[0]:
    aspects, opinions = terms[row]
    scorer.add(gold[row], triplet_sets[row], predicted_aspects=aspects, predicted_opinions=opinions)
  return scorer


# ------------------------------------------------------------------- ours


def ours_eval(output, batch, gold) -> evaluation.TripletScorer:
  """What `trainer.evaluate` does now for one batch."""
  decoded = decoding.fetch_host_outputs(output)
  codec = decoding.batch_codec(batch["span_word_bounds"])
  triplets = decoding.triplet_codes(decoded, batch["span_word_bounds"], codec)
  terms = decoding.term_codes(decoded, batch["span_mask"], batch["span_word_bounds"], codec)
  scorer = evaluation.TripletScorer()
  for row in np.nonzero(batch["example_mask"])[0]:
    aspects, opinions = terms[row]
    scorer.add_codes(gold[row], triplets[row], codec, predicted_aspects=aspects, predicted_opinions=opinions)
  return scorer


def ours_sets(decoded, batch):
  return (decoding.decoded_triplets(decoded, batch["span_word_bounds"]),
          decoding.decoded_terms(decoded, batch["span_mask"], batch["span_word_bounds"]))


def reference_sets(decoded, batch):
  return (reference_decoded_triplets(decoded, batch["span_word_bounds"]),
          reference_decoded_terms(decoded, batch["span_mask"], batch["span_word_bounds"]))


# ------------------------------------------------------------------- inputs


def make_batch(args: argparse.Namespace, regime: str, rng: np.random.Generator):
  """Eval-batch arrays, span logits and a pair logit table for one regime, and gold triplets."""
  batch_size, spans = args.batch, args.spans
  bounds = np.zeros((batch_size, spans, 2), np.int32)
  bounds[..., 1] = 1  # padding candidates: [0, 1)
  span_mask = np.zeros((batch_size, spans), bool)
  gold: List[List[Triplet]] = []
  for row in range(batch_size):
    words = int(rng.integers(args.min_words, args.max_words + 1))
    candidates = [(start, start + size) for size in range(1, MAX_SPAN_SIZE + 1)
                  for start in range(words - size + 1)][:spans]
    bounds[row, :len(candidates)] = candidates
    span_mask[row, :len(candidates)] = True
    picks = rng.integers(0, len(candidates), (int(rng.integers(1, 4)), 2))
    gold.append([Triplet(candidates[a], candidates[o], ("POSITIVE", "NEGATIVE", "NEUTRAL")[int(rng.integers(3))])
                 for a, o in picks])
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
  fresh = collections.deque(jax.block_until_ready(decode(*inputs)) for _ in range(4 * args.repeats + 2))
  fetched = jax.device_get(fresh.popleft())
  host = {key: fetched[key] for key in decoding.HOST_KEYS}

  # Same results before anything is timed.
  reference_scores = reference_eval(fresh.popleft(), batch, gold).result()
  if ours_eval(decode(*inputs), batch, gold).result() != reference_scores:
    raise AssertionError(f"[{regime}] scores differ from the reference")
  if ours_sets(host, batch) != reference_sets(fetched, batch):
    raise AssertionError(f"[{regime}] triplet or term sets differ from the reference")

  measurements = {
      "reference_eval": lambda: reference_eval(fresh.popleft(), batch, gold),
      "ours_eval": lambda: ours_eval(fresh.popleft(), batch, gold),
      "reference_sets": lambda: reference_sets(fetched, batch),
      "ours_sets": lambda: ours_sets(host, batch),
      "reference_fetch": lambda: jax.device_get(fresh.popleft()),
      "ours_fetch": lambda: decoding.fetch_host_outputs(fresh.popleft()),
  }
  seconds = common.interleaved(measurements, args.repeats)
  figures: Dict[str, Any] = {f"{name}_ms": 1000.0 * common.median(values) for name, values in seconds.items()}
  for piece in ("eval", "sets", "fetch"):
    figures[f"{piece}_speedup"] = figures[f"reference_{piece}_ms"] / figures[f"ours_{piece}_ms"]
  figures["on_outputs_per_batch"] = int(fetched["sentiment_on"].sum())
  figures["triplets_per_batch"] = sum(len(row) for row in reference_decoded_triplets(fetched, batch["span_word_bounds"]))
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
        f"backend {figures['backend']}, {os.cpu_count()} CPUs; ms per batch, reference / ours")
  for regime, values in figures["regimes"].items():
    print(f"  {regime:11s} ({values['on_outputs_per_batch']:6d} outputs on, {values['triplets_per_batch']:6d} triplets)")
    for piece in ("eval", "sets", "fetch"):
      print(f"    {piece:5s} reference {values[f'reference_{piece}_ms']:9.3f}   ours {values[f'ours_{piece}_ms']:8.3f}"
            f"   speedup {values[f'{piece}_speedup']:7.1f}x")
  if args.json:
    common.emit(figures, as_json=True)
  return figures


if __name__ == "__main__":
  main(sys.argv[1:])
