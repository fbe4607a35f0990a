"""dropout.Dropout: flax's Dropout, with the rate also as a runtime (traced) argument."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2e2s_jax.models.dropout import Dropout


def _apply(module, x, **kwargs):
  return module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(7)}, **kwargs)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_a_constant_rate_draws_exactly_what_flax_draws(rate):
  x = jax.random.normal(jax.random.key(0), (4, 33, 8))
  np.testing.assert_array_equal(_apply(Dropout(rate), x), _apply(nn.Dropout(rate), x))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.35])
def test_a_runtime_rate_under_jit_keeps_the_same_mask_and_scale(rate):
  x = jax.random.normal(jax.random.key(0), (4, 33, 8))
  traced = jax.jit(lambda r: _apply(Dropout(0.9), x, rate=r))  # the attribute is ignored
  np.testing.assert_allclose(traced(jnp.float32(rate)), _apply(nn.Dropout(rate), x), rtol=1e-6)
  assert traced._cache_size() == 1 and (traced(jnp.float32(0.2)) is not None) and traced._cache_size() == 1


def test_deterministic_is_the_identity_whatever_the_rate():
  x = jnp.arange(6.0)
  np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True, rate=jnp.float32(0.5)), x)
