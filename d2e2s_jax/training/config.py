"""The configuration of a training run, and the component configs derived from it.

`TrainConfig` is `d2e2s_jax.settings.Settings` (every setting's one definition: flags,
defaults, help, rules) plus the derivation of the configs of the pieces: batches, the
optimizer, the encoder of a from-scratch run and the model. Each component config names
the settings its fields come from (`SETTING_NAMES` in its module); the derivation copies
exactly those, so what a library user builds in Python and what the command line builds
agree field by field. Library code receives a `TrainConfig`; only the entry points read
absl flags.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from d2e2s_jax import settings
from d2e2s_jax.data import batching
from d2e2s_jax.models import d2e2s, deberta_v2_hub
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config
from d2e2s_jax.settings import SCRATCH, SettingError  # noqa: F401  (the names users import from here)
from d2e2s_jax.training import optim

PathLike = Union[str, os.PathLike]


class TrainConfig(settings.Settings):
  """Every setting of a run (see `d2e2s_jax.settings.Settings`) and the configs it derives."""

  def batch_config(self, tokenizer: Any, training: bool) -> batching.BatchConfig:
    """Batches of the training (`training`) or evaluation splits, padded with the tokenizer's pad id."""
    values = settings.derive(self, batching.SETTING_NAMES)
    values["batch_size"] = self.batch_size if training else self.eval_batch_size
    return batching.BatchConfig.for_tokenizer(tokenizer, **values)

  def optimizer_config(self) -> optim.OptimizerConfig:
    return optim.OptimizerConfig(**settings.derive(self, optim.SETTING_NAMES))

  def scratch_encoder_config(self, vocab_size: int, pad_token_id: int) -> DebertaV2Config:
    """A small DeBERTa-v2 in the xxlarge's style (relative buckets, shared keys, conv)."""
    return DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=self.scratch_hidden_size,
        num_hidden_layers=self.scratch_layers,
        num_attention_heads=self.scratch_heads,
        intermediate_size=self.scratch_intermediate_size,
        hidden_act="gelu",
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=self.scratch_position_buckets,
        max_relative_positions=-1,
        pos_att_type=("p2c", "c2p"),
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        conv_kernel_size=3,
        conv_act="gelu",
        layer_norm_eps=1e-7,
        pad_token_id=pad_token_id,
    )

  def encoder_config(self, tokenizer: Any, source: Optional[PathLike] = None) -> DebertaV2Config:
    """The encoder's architecture: derived for a from-scratch run, else read from `source`.

    Args:
      tokenizer: the run's tokenizer (a from-scratch encoder's vocabulary is its size).
      source: a pretrained encoder's `config.json` or its directory (a run's saved
        `encoder_config.json`, or the resolved pretrained directory); None fetches only
        `config.json` of `encoder` (from a local directory, the hub or its cache).
    """
    if self.encoder == SCRATCH:
      return self.scratch_encoder_config(len(tokenizer), int(tokenizer.pad_token_id))
    if source is None:
      source = deberta_v2_hub.resolve_pretrained_directory(self.encoder, ("config.json",))
    return DebertaV2Config.from_hf(source)

  def model_config(self, encoder_config: DebertaV2Config) -> d2e2s.D2E2SConfig:
    """The model of this run on `encoder_config`; a width the settings do not fit is a `SettingError`."""
    width = encoder_config.hidden_size
    if self.hidden_dim not in (0, width // 2) or width % 2:
      raise SettingError("hidden_dim", self.hidden_dim, f"must be 0 or half the encoder width ({width // 2})")
    if width % self.attention_heads:
      raise SettingError("attention_heads", self.attention_heads, f"must divide the encoder width ({width})")
    return d2e2s.D2E2SConfig(hidden_size=width, encoder=encoder_config,
                             **settings.derive(self, d2e2s.SETTING_NAMES))
