"""The ASTE input pipeline."""
