"""Training, evaluation and checkpointing of D2E2S."""
