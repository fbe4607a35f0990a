"""Dropout whose rate may be a runtime input of the jitted step.

A hyperparameter search's trials that differ only in dropout rates should share one
compiled training step (issue 12): a rate that is a Python float is a constant of the
program, so every trial would compile its own. `Dropout` is `flax.linen.Dropout` (same
random stream: same module name and `make_rng` call) that also takes `rate=` at call time
as a traced scalar, in which case the program does not depend on the rate's value: the
mask is drawn even at rate 0 (where it keeps everything) and nothing branches on it.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class Dropout(nn.Module):
  """`flax.linen.Dropout`, with an optional runtime `rate` argument.

  Attributes:
    rate: the drop probability used when the call passes none.
    rng_collection: the rng stream the masks are drawn from.
  """

  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool, rate: Optional[Array] = None) -> Array:
    """Drops entries with probability `rate` (or `self.rate`), scaling the rest by 1 / (1 - rate).

    Args:
      inputs: any array.
      deterministic: returns `inputs` unchanged when True.
      rate: a scalar (traced or not) overriding `self.rate`; must be in [0, 1).
    """
    if deterministic:
      return inputs
    if rate is None:
      if self.rate == 0.0:
        return inputs
      if self.rate == 1.0:  # as flax: no division by zero
        return jnp.zeros_like(inputs)
      keep = 1.0 - self.rate
    else:
      keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(self.make_rng(self.rng_collection), p=keep, shape=inputs.shape)
    return jax.lax.select(mask, inputs / jnp.asarray(keep, inputs.dtype), jnp.zeros_like(inputs))
