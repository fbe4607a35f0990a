"""Flax models: the DeBERTa-v2/v3 encoder and the D2E2S head."""
