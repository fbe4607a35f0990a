"""The configuration of a training run: one frozen dataclass, built by the entry point.

`TrainConfig` is flat (one field per command-line flag of `experiments/train.py`) so that
flagfiles, checkpoints (`checkpoints/config.json`) and notebooks all speak the same
names. Library code receives it; only the entry points read absl flags. The `*_config`
methods derive the configs of the pieces (batches, optimizer, model).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Tuple

from d2e2s_jax.data import batching
from d2e2s_jax.models import d2e2s
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config
from d2e2s_jax.training import optim

SCRATCH = "scratch"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every setting of a run. Defaults are the guide's deberta-v2-xxlarge settings on 14res.

  Data: `dataset`, `data_dir` (a data root holding `aste/<dataset>/...`; None downloads
  into `cache_dir`), `synthetic` (generate the project's synthetic dataset instead, for the
  offline demo), `max_length` (sub-tokens per sentence incl. [CLS]/[SEP]),
  `truncate_long` (drop what does not fit instead of failing).

  Encoder: `encoder` is a Hugging Face name or local directory, or "scratch" for a
  randomly initialised DeBERTa-v2 of the `scratch_*` sizes with a SentencePiece
  vocabulary of `scratch_vocab_size` trained on the training sentences. `tokenizer`
  overrides where the tokenizer comes from.
  """

  # Data.
  dataset: str = "14res"
  data_dir: Optional[str] = None
  cache_dir: str = "~/.cache/d2e2s_jax"
  synthetic: bool = False
  synthetic_sizes: Tuple[int, int, int] = (600, 150, 150)
  max_length: int = 256
  truncate_long: bool = False
  # Encoder.
  encoder: str = "microsoft/deberta-v2-xxlarge"
  tokenizer: Optional[str] = None
  scratch_hidden_size: int = 64
  scratch_layers: int = 2
  scratch_heads: int = 2
  scratch_intermediate_size: int = 128
  scratch_vocab_size: int = 400
  scratch_position_buckets: int = 32
  remat_policy: str = "none"
  compute_dtype: str = "float32"
  # D2E2S head.
  hidden_dim: int = 0  # 0: half the encoder width, the only value the model accepts
  lstm_layers: int = 2
  drop_out_rate: float = 0.3
  gcn_layers: int = 2
  gcn_dropout: float = 0.1
  attention_heads: int = 8
  prop_drop: float = 0.05
  size_embedding: int = 25
  max_span_size: int = 6
  sen_filter_threshold: float = 0.4
  max_decoded_spans: int = 24
  kl_weight: float = 10.0
  kl_differentiable: bool = False
  graph_implementation: str = "dense"
  released_graph: bool = False
  # Sampling and batches.
  batch_size: int = 16
  eval_batch_size: int = 16
  neg_entity_count: int = 50
  neg_triple_count: int = 50
  length_grouping_batches: int = 0
  # Optimizer.
  lr: float = 5e-6
  lr_warmup: float = 0.1
  weight_decay: float = 0.01
  max_grad_norm: float = 1.0
  bias_correction: bool = False
  gradient_accumulation_steps: int = 1
  moment_dtype: Optional[str] = None
  second_moment: str = "full"
  first_moment: bool = True  # False: no first moment (b1 = 0), Adafactor-style
  optimizer_update: str = "whole"  # "sliced": in place, one layer / row block at a time
  # Loop.
  epochs: int = 120
  max_steps: int = 0  # > 0 stops after that many steps (and sets the schedule's length)
  seed: int = 1
  eval_every: int = 0  # steps; 0 = once per epoch
  checkpoint_every: int = 0  # steps; 0 = once per epoch
  log_every: int = 10
  max_consecutive_skips: int = 20
  mesh: str = ""
  evaluate_test: bool = True
  progress_bar: bool = True

  def __post_init__(self):
    if self.max_length < 3:
      raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {self.max_length}")
    if self.epochs < 1 and self.max_steps < 1:
      raise ValueError("set epochs >= 1 or max_steps >= 1")
    if self.batch_size < 1 or self.eval_batch_size < 1:
      raise ValueError("batch sizes must be positive")

  def to_json(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_json(cls, values: dict) -> "TrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown TrainConfig fields: {unknown}")
    values = dict(values)
    if "synthetic_sizes" in values:
      values["synthetic_sizes"] = tuple(values["synthetic_sizes"])
    return cls(**values)

  def replace(self, **changes: Any) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def batch_config(self, tokenizer: Any, training: bool) -> batching.BatchConfig:
    return batching.BatchConfig.for_tokenizer(
        tokenizer,
        batch_size=self.batch_size if training else self.eval_batch_size,
        max_span_size=self.max_span_size,
        neg_entity_count=self.neg_entity_count,
        neg_triple_count=self.neg_triple_count,
        released_graph=self.released_graph,
        length_grouping_batches=self.length_grouping_batches,
    )

  def optimizer_config(self) -> optim.OptimizerConfig:
    return optim.OptimizerConfig(
        learning_rate=self.lr,
        warmup_fraction=self.lr_warmup,
        weight_decay=self.weight_decay,
        max_grad_norm=self.max_grad_norm,
        bias_correction=self.bias_correction,
        gradient_accumulation_steps=self.gradient_accumulation_steps,
        moment_dtype=self.moment_dtype,
        second_moment=self.second_moment,
        b1=0.9 if self.first_moment else 0.0,
        update=self.optimizer_update,
    )

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

  def model_config(self, encoder_config: DebertaV2Config) -> d2e2s.D2E2SConfig:
    width = encoder_config.hidden_size
    hidden_dim = self.hidden_dim or width // 2
    return d2e2s.D2E2SConfig(
        hidden_size=width,
        hidden_dim=hidden_dim,
        lstm_layers=self.lstm_layers,
        drop_out_rate=self.drop_out_rate,
        gcn_layers=self.gcn_layers,
        gcn_dropout=self.gcn_dropout,
        attention_heads=self.attention_heads,
        prop_drop=self.prop_drop,
        size_embedding=self.size_embedding,
        sen_filter_threshold=self.sen_filter_threshold,
        max_span_size=self.max_span_size,
        max_decoded_spans=self.max_decoded_spans,
        kl_weight=self.kl_weight,
        kl_differentiable=self.kl_differentiable,
        graph_implementation=self.graph_implementation,
        dtype=self.compute_dtype,
        encoder=encoder_config,
        remat_policy=self.remat_policy,
    )
