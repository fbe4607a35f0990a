"""The D2E2S training loss (reference page, "Training"), masked for padded batches.

* entity: mean cross-entropy over the real span candidates of real rows;
* sentiment: mean over the real pairs of real rows of the mean binary cross-entropy over
  the 4 sentiment outputs (all-zero targets = no sentiment);
* total: entity + sentiment + kl_weight * KL term; a batch without any real pair uses the
  entity loss alone (the released `D2E2SLoss.compute`), with no NaN from the empty mean.

Everything is computed in float32 whatever the compute dtype of the model.
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _masked_mean(values: Array, mask: Array) -> Tuple[Array, Array]:
  """(mean of values where mask, number of masked-in entries); 0 when there are none."""
  mask = mask.astype(jnp.float32)
  count = mask.sum()
  total = jnp.sum(jnp.where(mask > 0, values, 0.0))
  return total / jnp.maximum(count, 1.0), count


def d2e2s_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array],
               kl_weight: float = 10.0) -> Tuple[Array, Dict[str, Array]]:
  """The total loss and its components.

  Args:
    outputs: `D2E2SHead.__call__`'s `span_logits` [B, S, 3], `pair_logits` [B, P, 4] and
      `kl_term` (scalar).
    batch: `span_labels`, `span_mask`, `pair_labels`, `pair_mask` and, optionally,
      `example_mask` (rows that are padding contribute nothing).
    kl_weight: weight of the KL term (10 in the released code).

  Returns:
    (total, {"total", "entity", "sentiment", "kl_term", "num_spans", "num_pairs"}),
    float32 scalars.
  """
  span_mask = batch["span_mask"].astype(bool)
  pair_mask = batch["pair_mask"].astype(bool)
  if "example_mask" in batch:
    rows = batch["example_mask"].astype(bool)[:, None]
    span_mask, pair_mask = span_mask & rows, pair_mask & rows

  span_logits = outputs["span_logits"].astype(jnp.float32)
  entity_ce = optax.softmax_cross_entropy_with_integer_labels(span_logits, batch["span_labels"])
  entity, num_spans = _masked_mean(entity_ce, span_mask)

  pair_logits = outputs["pair_logits"].astype(jnp.float32)
  pair_bce = optax.sigmoid_binary_cross_entropy(pair_logits, batch["pair_labels"].astype(jnp.float32)).mean(-1)
  sentiment, num_pairs = _masked_mean(pair_bce, pair_mask)

  kl = outputs["kl_term"].astype(jnp.float32)
  total = jnp.where(num_pairs > 0, entity + sentiment + kl_weight * kl, entity)
  return total, {"total": total, "entity": entity, "sentiment": sentiment, "kl_term": kl,
                 "num_spans": num_spans, "num_pairs": num_pairs}
