"""d2e2s_jax: D2E2S aspect sentiment triplet extraction in JAX/Flax."""

__version__ = "0.1.0"
