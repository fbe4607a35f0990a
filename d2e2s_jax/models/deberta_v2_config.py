"""`DebertaV2Config`: the frozen configuration of the Flax DeBERTa-v2/v3 encoder.

It mirrors the fields of `transformers.DebertaV2Config` that change what the encoder
computes, including the ones `transformers` reads with `getattr` defaults
(`position_buckets`, `share_att_key`, `norm_rel_ebd`, `conv_*`, `embedding_size`,
`attention_head_size`), with the same defaults. It is built from a HF `config.json`
(a dict, a path to the file or its directory, or a `transformers` config object) and
converts back to a HF config dict. Keys of the HF config that do not affect the encoder
(labels, pooler, generation settings, ...) are dropped; `to_hf_dict` writes a complete
`deberta-v2` config that `transformers.DebertaV2Model` loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Tuple, Union

# Activations `transformers.activations.ACT2FN` names that the encoder supports. "gelu" is
# the exact (erf) GELU; the tanh approximation goes by the other two names.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "silu", "swish")
_POS_ATT_TYPES = ("c2p", "p2c")
_NORM_REL_EBD = ("none", "layer_norm")


def _normalize_pos_att_type(value: Any) -> Tuple[str, ...]:
  """HF accepts "p2c|c2p", a list, or None; keep a tuple of lower-case names."""
  if value is None:
    return ()
  if isinstance(value, str):
    value = value.split("|")
  return tuple(x.strip().lower() for x in value if x.strip())


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
  """What the DeBERTa-v2/v3 encoder computes. Defaults are `transformers`' defaults.

  Attributes:
    vocab_size: rows of the word-embedding table.
    hidden_size: model width.
    num_hidden_layers: transformer layers.
    num_attention_heads: attention heads.
    intermediate_size: feed-forward width.
    hidden_act: feed-forward activation (one of SUPPORTED_ACTIVATIONS).
    hidden_dropout_prob: dropout on embeddings, residual branches, conv and relative
      embeddings.
    attention_probs_dropout_prob: dropout on attention probabilities.
    max_position_embeddings: rows of the absolute position table; also the relative
      range when `max_relative_positions < 1`.
    type_vocab_size: token-type rows (0: no token-type embedding).
    initializer_range: standard deviation of the random initialisation.
    layer_norm_eps: LayerNorm epsilon.
    relative_attention: use disentangled relative-position attention.
    max_relative_positions: relative range; < 1 means `max_position_embeddings`.
    position_buckets: > 0 turns on log-bucketed relative positions with this many
      buckets per direction.
    pad_token_id: the pad id (its embedding row gets no gradient, as in PyTorch).
    position_biased_input: add absolute position embeddings to the input.
    pos_att_type: subset of ("c2p", "p2c"): the relative terms of the attention score.
    share_att_key: project relative embeddings with the content query/key projections.
    norm_rel_ebd: "none" or "layer_norm" (LayerNorm on the relative embeddings).
    conv_kernel_size: > 0 adds the convolution after the first layer (odd sizes only).
    conv_act: activation of that convolution.
    conv_groups: channel groups of that convolution.
    embedding_size: embedding-table width; None means `hidden_size` (otherwise a
      bias-free `embed_proj` maps it to `hidden_size`).
    attention_head_size: per-head width; None means `hidden_size // num_attention_heads`.
  """

  vocab_size: int = 128100
  hidden_size: int = 1536
  num_hidden_layers: int = 24
  num_attention_heads: int = 24
  intermediate_size: int = 6144
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-7
  relative_attention: bool = False
  max_relative_positions: int = -1
  position_buckets: int = -1
  pad_token_id: int = 0
  position_biased_input: bool = True
  pos_att_type: Tuple[str, ...] = ()
  share_att_key: bool = False
  norm_rel_ebd: str = "none"
  conv_kernel_size: int = 0
  conv_act: str = "tanh"
  conv_groups: int = 1
  embedding_size: Optional[int] = None
  attention_head_size: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, "pos_att_type", _normalize_pos_att_type(self.pos_att_type))
    object.__setattr__(self, "norm_rel_ebd", str(self.norm_rel_ebd).strip().lower())
    problems = []
    # The attention output projection is hidden_size -> hidden_size in `transformers`, so
    # heads * head width must equal hidden_size even when attention_head_size is given.
    if self.attention_head_size is not None and self.attention_head_size * self.num_attention_heads != self.hidden_size:
      problems.append(f"attention_head_size {self.attention_head_size} x {self.num_attention_heads} heads != "
                      f"hidden_size {self.hidden_size}")
    if self.attention_head_size is None and self.hidden_size % self.num_attention_heads:
      problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                      f"{self.num_attention_heads}")
    unknown = [t for t in self.pos_att_type if t not in _POS_ATT_TYPES]
    if unknown:
      problems.append(f"pos_att_type {unknown} not in {_POS_ATT_TYPES}")
    unknown = [t for t in self.norm_rel_ebd_parts if t not in _NORM_REL_EBD]
    if unknown:
      problems.append(f"norm_rel_ebd {unknown} not in {_NORM_REL_EBD}")
    for field in ("hidden_act", "conv_act"):
      if getattr(self, field) not in SUPPORTED_ACTIVATIONS:
        problems.append(f"{field} {getattr(self, field)!r} not in {SUPPORTED_ACTIVATIONS}")
    # PyTorch pads (k - 1) // 2 on both sides, so an even kernel shortens the sequence and
    # the released model's residual add fails; refuse it here instead.
    if self.conv_kernel_size > 0 and self.conv_kernel_size % 2 == 0:
      problems.append(f"conv_kernel_size {self.conv_kernel_size} must be odd")
    if self.conv_kernel_size > 0 and self.hidden_size % self.conv_groups:
      problems.append(f"hidden_size {self.hidden_size} is not a multiple of conv_groups {self.conv_groups}")
    if problems:
      raise ValueError("invalid DebertaV2Config: " + "; ".join(problems))

  # Derived quantities, named as in `transformers`' modeling code.
  @property
  def norm_rel_ebd_parts(self) -> Tuple[str, ...]:
    return tuple(x.strip() for x in self.norm_rel_ebd.split("|"))

  @property
  def head_size(self) -> int:
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def input_embedding_size(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def relative_range(self) -> int:
    """`max_relative_positions` as the attention uses it (bucket count excluded)."""
    return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

  @property
  def att_span(self) -> int:
    """Half the number of relative-embedding rows (HF `pos_ebd_size`)."""
    return self.position_buckets if self.position_buckets > 0 else self.relative_range

  @property
  def score_scale_factor(self) -> int:
    """1 + number of relative terms; HF counts them even when relative attention is off."""
    return 1 + len(self.pos_att_type)

  @classmethod
  def from_hf(cls, source: Union[Mapping[str, Any], str, os.PathLike, Any]) -> "DebertaV2Config":
    """Builds the config from a HF config dict, a `config.json` path or directory, or a
    `transformers` config object."""
    if isinstance(source, (str, os.PathLike)):
      path = os.fspath(source)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      try:
        with open(path, encoding="utf-8") as f:
          source = json.load(f)
      except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no DeBERTa config.json there") from None
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    elif not isinstance(source, Mapping):
      if not hasattr(source, "to_dict"):
        raise TypeError(f"cannot build a DebertaV2Config from {type(source).__name__}")
      source = source.to_dict()
    model_type = source.get("model_type", "deberta-v2")
    if model_type != "deberta-v2":
      raise ValueError(f"config model_type {model_type!r} is not 'deberta-v2'")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in source.items() if k in names}
    # HF writes `pad_token_id: null` for some checkpoints; the embedding then has no pad row.
    if values.get("pad_token_id", 0) is None:
      values["pad_token_id"] = -1
    return cls(**values)

  def to_hf_dict(self) -> dict:
    """A `config.json` dict that `transformers.DebertaV2Config` reads back to this config."""
    out = dataclasses.asdict(self)
    out["pos_att_type"] = "|".join(self.pos_att_type) if self.pos_att_type else None
    for optional in ("embedding_size", "attention_head_size"):
      if out[optional] is None:
        del out[optional]
    if out["pad_token_id"] < 0:
      out["pad_token_id"] = None
    out["model_type"] = "deberta-v2"
    out["architectures"] = ["DebertaV2Model"]
    return out

  def to_transformers(self) -> Any:
    """The equivalent `transformers.DebertaV2Config` (imports transformers)."""
    import transformers  # pylint: disable=import-outside-toplevel
    values = self.to_hf_dict()
    del values["model_type"]
    return transformers.DebertaV2Config(**values)
