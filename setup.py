"""d2e2s-jax: a JAX/Flax reimplementation of D2E2S for aspect sentiment triplet extraction."""

import setuptools

# Versions are pinned to the set this project is tested with (late 2026). `transformers`
# supplies tokenizers, configs and the PyTorch reference; it no longer ships Flax models.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "jraph==0.0.6.dev0",
    "numpy==2.4.6",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "huggingface-hub==2.4.0",
    "sentencepiece==0.2.3",
    "protobuf==7.36.2",
    "safetensors==0.8.0",
    "spacy==3.8.18",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
    # Hyperparameter search (d2e2s_jax/tuning.py); brings SQLAlchemy for its RDB studies.
    "optuna==5.0.0",
]

TEST_REQUIRES = [
    "pytest==9.0.3",
    "pytest-xdist==3.8.0",
    "hypothesis==6.155.2",
    # Executing the Colab notebooks in smoke mode (tests/test_notebooks.py).
    "nbclient==0.11.0",
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
    "jupyter_client==8.10.0",
    # CPU build, the numerical reference for parity tests and benchmarks. Keep this exact
    # pin: a looser one pulls a CUDA build of several GB.
    "torch==2.13.0",
    # PostgreSQL driver of the sweep's multi-worker test (SQLAlchemy's default for
    # postgresql:// URLs); the server itself comes from .ci/run's apt-get.
    "psycopg[binary]==3.3.9",
]

setuptools.setup(
    name="d2e2s-jax",
    version="0.1.0",
    description="D2E2S aspect sentiment triplet extraction in JAX/Flax with a DeBERTa-v2/v3 encoder",
    packages=setuptools.find_packages(include=["d2e2s_jax", "d2e2s_jax.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    license="MIT",
)
