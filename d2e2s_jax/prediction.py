"""The one prediction path: jitted forward and decoding, then the host conversion.

Training evaluation (`d2e2s_jax.training.trainer`), prediction files and
`d2e2s_jax.inference.Predictor` all predict through `predict`:

1. `batching.eval_batches` (every sentence once, static shapes from a `PlannedSplit`);
2. the jitted `make_predict_step` (`D2E2S.predict`: forward pass and static-shape
   decoding, `decoding.decode`);
3. `decoding.fetch_host_outputs` (only the arrays the host reads) and
   `decoding.host_predictions`: one `SentencePrediction` per sentence, in dataset order.

`score` turns predictions into the triplet, aspect and opinion scores of a split;
`as_example` / `write_predictions` into a D2E2S JSON predictions file that
`experiments.evaluate` scores to exactly the same numbers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np

from d2e2s_jax import evaluation
from d2e2s_jax.data import batching, encoding, writers
from d2e2s_jax.data.examples import OPINION, TARGET, Entity, Example
from d2e2s_jax.models import decoding
from d2e2s_jax.models.decoding import SentencePrediction
from d2e2s_jax.training import sharding


def make_predict_step(model: nn.Module, mesh: jax.sharding.Mesh, param_shardings: Any,
                      threshold: Optional[float] = None):
  """The jitted evaluation step `step(params, batch)`: forward pass and static-shape decoding.

  `threshold` (the sentiment threshold, `sen_filter_threshold`) is then an argument of
  the compiled program rather than a constant in it, so that runs differing only in it
  share one compilation; None decodes with the model config's. The returned function
  also has `lower(params, batch)`, `runtime_values` and `trace_count()`: how often it
  has been traced, one compilation per distinct batch shape (see
  `sharding.bind_runtime_values`).
  """
  traces = [0]

  def predict_step(params, batch, threshold):
    traces[0] += 1
    return model.apply({"params": params}, batch, threshold, method=type(model).predict)

  jitted = jax.jit(predict_step, in_shardings=(param_shardings, sharding.batch_sharding(mesh),
                                               sharding.replicated(mesh)),
                   out_shardings=sharding.replicated(mesh))
  return sharding.bind_runtime_values(jitted, None if threshold is None else np.float32(threshold), mesh, traces)


def predict(predict_step, params: Any, encoded: Sequence[encoding.EncodedExample],
            batch_config: batching.BatchConfig, mesh: jax.sharding.Mesh,
            planned: Optional[batching.PlannedSplit] = None) -> List[SentencePrediction]:
  """The prediction of every encoded sentence, in order (`encoded[i].index == i`).

  Args:
    predict_step: `make_predict_step`'s function (or one with its signature).
    params: the model parameters.
    encoded: the sentences, as `encoding.encode_examples` numbers them.
    batch_config: the evaluation batches' config.
    mesh: where the step runs; batches are split over its batch axes.
    planned: `batching.plan_dataset(encoded, batch_config, train=False)`, possibly with
      other shapes (merged with another split's, or `ShapePlan.worst_case`); computed
      here by default.
  """
  results: List[Optional[SentencePrediction]] = [None] * len(encoded)
  for batch in batching.eval_batches(encoded, batch_config, planned):
    decoded = decoding.fetch_host_outputs(predict_step(params, sharding.shard_batch(batch, mesh)))
    rows = decoding.host_predictions(decoded, batch["span_mask"], batch["span_word_bounds"])
    for row in np.nonzero(batch["example_mask"])[0]:
      results[int(batch["example_index"][row])] = rows[row]
  return results  # type: ignore[return-value]


def score(examples: Sequence[Example], predictions: Sequence[SentencePrediction]) -> Dict[str, Dict[str, float]]:
  """Triplet, aspect and opinion scores of a split's predictions against its gold examples.

  Gold is each example's full triplet set (the untruncated examples); the predictions are
  scored as codes (`TripletScorer.add_codes`: the counts of the sets, without one Python
  object per predicted triplet).
  """
  if len(examples) != len(predictions):
    raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
  scorer = evaluation.TripletScorer()
  for example, prediction in zip(examples, predictions):
    scorer.add_codes(example.triplets, prediction.triplet_codes, prediction.codec,
                     predicted_aspects=prediction.aspect_codes, predicted_opinions=prediction.opinion_codes)
  return evaluation.scores_as_dict(scorer.result())


def as_example(example: Example, predicted: SentencePrediction) -> Example:
  """A sentence's prediction as an `Example` of a predictions file.

  The sentence's id, words and parse, every predicted triplet (those of the INVALID
  output too: the evaluation counts them, as released) with its score, and as
  `entities` every span the model typed target or opinion, paired or not (targets first,
  each type in span order): what the aspect and opinion term scores count.
  """
  scored = predicted.scored_triplets()
  codec = predicted.codec
  entities = tuple(Entity(TARGET, span) for span in codec.span_list(predicted.aspect_codes)) + tuple(
      Entity(OPINION, span) for span in codec.span_list(predicted.opinion_codes))
  return dataclasses.replace(example, triplets=tuple(triplet for triplet, _ in scored),
                             triplet_scores=tuple(float(score) for _, score in scored), entities=entities)


def write_predictions(examples: Sequence[Example], predictions: Sequence[SentencePrediction],
                      path: Union[str, os.PathLike]) -> None:
  """Writes a split's predictions as a D2E2S JSON predictions file (`as_example` per sentence)."""
  if len(examples) != len(predictions):
    raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
  writers.write_examples([as_example(e, p) for e, p in zip(examples, predictions)], path, "d2e2s")
