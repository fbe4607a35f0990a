"""Every setting of a run, defined once: name, type, default, help and valid range.

`Settings` is a flat frozen dataclass, one field per setting. Each field is declared with
`setting(default, help, rule)`, and that declaration is the only one:

* `experiments/train.py` defines one absl flag per field (same name, type, default and
  help), so flagfiles, `checkpoints/config.json` files and notebooks speak the same names;
* the component configs (`D2E2SConfig`, `OptimizerConfig`, `BatchConfig`) take their
  defaults from `DEFAULTS`, so a component config built in Python equals the one that the
  command line builds with default flags;
* `check_value` / `validate` apply the rules: in `Settings.__post_init__` (so no run
  starts with a bad value), in the component configs' own checks, and on every value a
  hyperparameter search space can produce.

A broken rule raises `SettingError`, whose one-line message names the flag and the rule:
`--drop_out_rate=1.5: must be in [0, 1)`.

This module imports nothing from the rest of the package (and not jax), so that every
other module may import it. `d2e2s_jax.training.config.TrainConfig` is `Settings` plus
the derivation of the component configs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

SCRATCH = "scratch"  # `encoder` value: a randomly initialised DeBERTa-v2 of the scratch_* sizes

# Choice lists that models and the optimizer implement (they import them from here).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
LAYER_LOOPS = ("auto", "scan", "unroll")
COMPUTE_DTYPES = ("float32", "bfloat16")
MOMENT_DTYPES = ("float32", "bfloat16")
GRAPH_IMPLEMENTATIONS = ("dense", "jraph")
SECOND_MOMENTS = ("full", "factored")
OPTIMIZER_UPDATES = ("whole", "sliced")
# Rows of the span-size embedding table: a span's size (in words) indexes it.
NUM_SIZE_EMBEDDINGS = 100


class SettingError(ValueError):
  """A setting has a value outside its rule. The message is one line naming the flag."""

  def __init__(self, name: str, value: Any, rule: str):
    self.name, self.value, self.rule = name, value, rule
    super().__init__(f"--{name}={_show(value)}: {rule}")


def _show(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  if value is None:
    return "(unset)"
  return str(value)


# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
  """A predicate on one value and the phrase that states it ("must be in [0, 1)")."""

  holds: Callable[[Any], bool]
  says: str


def interval(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
             high_open: bool = False) -> Rule:
  """low <= value <= high (either bound optional, either end open)."""
  if low is not None and high is None:
    return Rule(lambda v: v > low if low_open else v >= low, f"must be {'>' if low_open else '>='} {low:g}")
  if high is not None and low is None:
    return Rule(lambda v: v < high if high_open else v <= high, f"must be {'<' if high_open else '<='} {high:g}")
  left, right = "(" if low_open else "[", ")" if high_open else "]"

  def holds(v):
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

  return Rule(holds, f"must be in {left}{low:g}, {high:g}{right}")


def one_of(*choices: Any) -> Rule:
  return Rule(lambda v: v in choices, "must be one of " + ", ".join(str(c) for c in choices))


NONEMPTY = Rule(lambda v: bool(str(v).strip()), "must not be empty")
POSITIVE = interval(1)
NON_NEGATIVE = interval(0)
PROBABILITY_DROP = interval(0, 1, high_open=True)  # dropout rates


ALL_OR_COUNT = Rule(lambda v: v >= -1, "must be >= 0, or -1 for all")


def setting(default: Any, help: str, rule: Optional[Rule] = None) -> Any:  # pylint: disable=redefined-builtin
  """A `Settings` field: its default, its help text (the flag's) and its valid range."""
  return dataclasses.field(default=default, metadata={"help": help, "rule": rule})


# -------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every setting of a run. Defaults are the guide's deberta-v2-xxlarge settings on 14res."""

  # Data.
  dataset: str = setting("14res", "Dataset name: 14lap, 14res, 15res or 16res (or any name under "
                         "--data_dir/aste).", NONEMPTY)
  data_dir: Optional[str] = setting(None, "Data root holding aste/<dataset>/<split>_dep_triple_polarity_result.json; "
                                    "unset downloads the dataset into --cache_dir (needs internet).")
  cache_dir: str = setting("~/.cache/d2e2s_jax", "Where downloaded datasets are kept.", NONEMPTY)
  synthetic: bool = setting(False, "Use the project's deterministic synthetic review dataset (offline demo) instead "
                            "of real data.")
  synthetic_sizes: Tuple[int, int, int] = setting((600, 150, 150), "Sentences in the synthetic train,dev,test splits.",
                                                  Rule(lambda v: len(v) == 3 and min(v) >= 1,
                                                       "must be three positive counts (train,dev,test)"))
  max_length: int = setting(256, "Most sub-tokens per sentence, [CLS] and [SEP] included.",
                            Rule(lambda v: v >= 3, "must be >= 3 (room for [CLS], a word and [SEP])"))
  truncate_long: bool = setting(False, "Truncate over-long sentences (dropping gold triplets that no longer fit) "
                                "instead of failing.")
  # Encoder.
  encoder: str = setting("microsoft/deberta-v2-xxlarge", "Hugging Face model name or local directory of a "
                         "DeBERTa-v2/v3 encoder, or 'scratch' for a randomly initialised small DeBERTa-v2 (see "
                         "--scratch_*).", NONEMPTY)
  tokenizer: Optional[str] = setting(None, "Tokenizer name or directory; default: the encoder's (or, for 'scratch', "
                                     "a SentencePiece model trained on the training sentences).")
  scratch_hidden_size: int = setting(64, "Width of the from-scratch encoder.", POSITIVE)
  scratch_layers: int = setting(2, "Layers of the from-scratch encoder.", POSITIVE)
  scratch_heads: int = setting(2, "Attention heads of the from-scratch encoder (must divide "
                               "--scratch_hidden_size).", POSITIVE)
  scratch_intermediate_size: int = setting(128, "FFN width of the from-scratch encoder.", POSITIVE)
  scratch_vocab_size: int = setting(400, "SentencePiece vocabulary size for the from-scratch encoder.",
                                    interval(16))
  scratch_position_buckets: int = setting(32, "Relative position buckets of the from-scratch encoder.", POSITIVE)
  remat_policy: str = setting("none", "Rematerialise encoder layers in the backward pass: "
                              + ", ".join(REMAT_POLICIES) + ".", one_of(*REMAT_POLICIES))
  layer_loop: str = setting("auto", "How the encoder runs layers 1..N-1: scan (one traced layer body: compiles in "
                            "seconds at any depth), unroll (every layer inlined: no per-layer slicing of the stacked "
                            "parameters and residuals, longer compiles) or auto (the platform's measured choice, "
                            "see deberta_v2.AUTO_LAYER_LOOP).", one_of(*LAYER_LOOPS))
  compute_dtype: str = setting("float32", "Compute dtype: float32 or bfloat16 (parameters stay float32).",
                               one_of(*COMPUTE_DTYPES))
  # D2E2S head.
  hidden_dim: int = setting(0, "Units per direction of the BiLSTM channel: 0 = half the encoder width; any other "
                            "value must equal half the width (the GCNs share one width for encoder and BiLSTM "
                            "features).", NON_NEGATIVE)
  lstm_layers: int = setting(2, "Layers of the BiLSTM channel.", POSITIVE)
  drop_out_rate: float = setting(0.3, "Dropout of the BiLSTM channel.", PROBABILITY_DROP)
  gcn_layers: int = setting(2, "Layers of SynGCN and SemGCN.", POSITIVE)
  gcn_dropout: float = setting(0.1, "Dropout between GCN layers.", PROBABILITY_DROP)
  attention_heads: int = setting(8, "Heads of SemGCN's attention graph (must divide the encoder width).", POSITIVE)
  prop_drop: float = setting(0.05, "Dropout on the span and pair classifier inputs.", PROBABILITY_DROP)
  size_embedding: int = setting(25, "Width of the span size embedding.", POSITIVE)
  max_span_size: int = setting(6, "Longest candidate span, in words.",
                               interval(1, NUM_SIZE_EMBEDDINGS, high_open=True))
  sen_filter_threshold: float = setting(0.4, "Sigmoid threshold of a sentiment at decoding (0.4 in the paper's "
                                        "code).", interval(0, 1, low_open=True, high_open=True))
  max_decoded_spans: int = setting(24, "Spans kept per sentence at decoding (top-k of the non-None spans).",
                                   interval(2))
  kl_weight: float = setting(10.0, "Weight of the syntactic/semantic KL term in the loss.", NON_NEGATIVE)
  kl_differentiable: bool = setting(False, "Let gradients flow through the KL term (the released code does not).")
  graph_implementation: str = setting("dense", "GCN implementation: dense (batched matmuls) or jraph (message "
                                      "passing).", one_of(*GRAPH_IMPLEMENTATIONS))
  released_graph: bool = setting(False, "Build the syntactic graph as the released code does (to reproduce "
                                 "published numbers).")
  # Sampling and batches.
  batch_size: int = setting(16, "Training sentences per step.", POSITIVE)
  eval_batch_size: int = setting(16, "Sentences per evaluation batch.", POSITIVE)
  neg_entity_count: int = setting(50, "Negative spans sampled per sentence; -1 = all (the released behaviour).",
                                  ALL_OR_COUNT)
  neg_triple_count: int = setting(50, "Negative pairs sampled per sentence; -1 = all (the released behaviour).",
                                  ALL_OR_COUNT)
  length_grouping_batches: int = setting(0, "0 = uniformly shuffled batches; k > 0 groups k batches' sentences by "
                                         "length.", NON_NEGATIVE)
  token_buckets_per_octave: int = setting(2, "Padded sequence lengths per doubling: 2 = 16, 24, 32, 48, ... (at most "
                                          "1.5x padding); 4 = 8, 10, 12, 14, 16, 20, ... (1.25x, twice the "
                                          "compilations).", one_of(1, 2, 4, 8))
  # Optimizer.
  lr: float = setting(5e-6, "Peak learning rate.", interval(0, low_open=True))
  lr_warmup: float = setting(0.1, "Fraction of the steps spent in linear warmup.", interval(0, 1))
  weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and LayerNorm).", NON_NEGATIVE)
  max_grad_norm: float = setting(1.0, "Global-norm gradient clipping; <= 0 disables.")
  bias_correction: bool = setting(False, "Adam bias correction (the released optimizer has none).")
  gradient_accumulation_steps: int = setting(1, "Micro-batches accumulated per optimizer update.", POSITIVE)
  moment_dtype: Optional[str] = setting(None, "Storage dtype of the optimizer's moments (bfloat16 halves them); "
                                        "unset = float32.", one_of(*MOMENT_DTYPES))
  second_moment: str = setting("full", "full (Adam) or factored (row/column second moments: a memory-lean Adam "
                               "approximation).", one_of(*SECOND_MOMENTS))
  first_moment: bool = setting(True, "Keep Adam's first moment (b1 = 0.9); --nofirst_moment drops it (b1 = 0), "
                               "saving one parameter-sized state.")
  optimizer_update: str = setting("whole", "whole (the optax chain over all parameters) or sliced (the same "
                                  "arithmetic applied in place one layer / row block at a time: its temporaries are "
                                  "one slice big; no gradient accumulation).", one_of(*OPTIMIZER_UPDATES))
  # Loop.
  epochs: int = setting(120, "Training epochs.", NON_NEGATIVE)
  max_steps: int = setting(0, "Stop after this many steps, overriding --epochs (0 = use --epochs).", NON_NEGATIVE)
  seed: int = setting(1, "Random seed (initialisation, sampling, dropout).", NON_NEGATIVE)
  eval_every: int = setting(0, "Evaluate on dev (and test) every N steps; 0 = once per epoch.", NON_NEGATIVE)
  checkpoint_every: int = setting(0, "Save a resumable checkpoint every N steps; 0 = once per epoch.", NON_NEGATIVE)
  log_every: int = setting(10, "Write training metrics every N steps.", POSITIVE)
  max_consecutive_skips: int = setting(20, "Stop the run after this many consecutive non-finite steps.", POSITIVE)
  mesh: str = setting("", "Device mesh, e.g. 'data:4,fsdp:2' (axes data, fsdp, tensor); empty = all devices on "
                      "data.")
  evaluate_test: bool = setting(True, "Also evaluate the test split at every evaluation.")
  progress_bar: bool = setting(True, "Show a progress bar.")

  def __post_init__(self):
    validate(self)

  def to_json(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_json(cls, values: Mapping[str, Any]):
    """The settings of a `to_json` dict (e.g. an earlier run's `checkpoints/config.json`)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
      raise ValueError(f"unknown settings: {', '.join(unknown)}")
    values = dict(values)
    if isinstance(values.get("synthetic_sizes"), list):
      values["synthetic_sizes"] = tuple(values["synthetic_sizes"])
    return cls(**values)

  def replace(self, **changes: Any):
    return dataclasses.replace(self, **changes)


FIELDS: Dict[str, dataclasses.Field] = {field.name: field for field in dataclasses.fields(Settings)}
TYPES: Dict[str, Any] = typing.get_type_hints(Settings)


def help_text(name: str) -> str:
  return FIELDS[name].metadata["help"]


def _type_error(name: str, value: Any) -> Optional[str]:
  """Why `value` is not of setting `name`'s type, or None."""
  hint = TYPES[name]
  optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
  if optional:
    if value is None:
      return None
    hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
  if typing.get_origin(hint) is tuple:
    ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return None if ok else "must be a comma-separated list of integers"
  if hint is bool:
    return None if isinstance(value, bool) else "must be true or false"
  if hint is int:
    return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return "must be a number"
    return None if math.isfinite(value) else "must be a finite number"
  return None if isinstance(value, str) else "must be a string"


def check_value(name: str, value: Any) -> None:
  """Raises `SettingError` unless `value` is a valid value of setting `name` on its own."""
  if name not in FIELDS:
    raise SettingError(name, value, "no such setting")
  problem = _type_error(name, value)
  if problem:
    raise SettingError(name, value, problem)
  rule = FIELDS[name].metadata["rule"]
  if rule is not None and value is not None and not rule.holds(value):
    raise SettingError(name, value, rule.says)


# Rules between settings: (names, predicate on their values, what the rule says about
# the last name, formatted with the values). A broken one is reported on the last name.
COMBINATIONS: Tuple[Tuple[Tuple[str, ...], Callable[..., bool], str], ...] = (
    (("epochs", "max_steps"), lambda epochs, steps: epochs >= 1 or steps >= 1,
     "must be >= 1 when --epochs=0"),
    (("optimizer_update", "gradient_accumulation_steps"), lambda update, steps: update != "sliced" or steps == 1,
     "must be 1 with --optimizer_update=sliced (it has no accumulation; use --optimizer_update=whole)"),
    (("scratch_hidden_size", "scratch_heads"), lambda width, heads: width % heads == 0,
     "must divide --scratch_hidden_size={scratch_hidden_size}"),
    (("encoder", "scratch_hidden_size", "attention_heads"),
     lambda encoder, width, heads: encoder != SCRATCH or width % heads == 0,
     "must divide the encoder width (--scratch_hidden_size={scratch_hidden_size})"),
    (("encoder", "scratch_hidden_size", "hidden_dim"),
     lambda encoder, width, hidden_dim: encoder != SCRATCH or (hidden_dim in (0, width // 2) and width % 2 == 0),
     "must be 0 or half the encoder width (--scratch_hidden_size={scratch_hidden_size}, which must be even)"),
)


def check_combinations(values: Mapping[str, Any]) -> None:
  """Raises `SettingError` for the first broken rule between the given settings.

  Rules whose settings are not all in `values` are skipped (a search space may give some).
  """
  for names, holds, says in COMBINATIONS:
    if all(name in values for name in names) and not holds(*(values[name] for name in names)):
      raise SettingError(names[-1], values[names[-1]], says.format(**values))


def validate(settings: Any) -> None:
  """Checks every setting of `settings` (a `Settings` or a mapping of names to values)."""
  values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
  for name, value in values.items():
    check_value(name, tuple(value) if isinstance(value, list) else value)
  check_combinations(values)


def check_fields(component: Any, names: Mapping[str, str]) -> None:
  """Checks a component config's fields by the rules of the settings they come from.

  Args:
    component: a component config (dataclass instance).
    names: its field name -> the setting's name (as in `derive`).
  """
  for field, name in names.items():
    check_value(name, getattr(component, field))


def component_defaults(names: Mapping[str, str]) -> Dict[str, Any]:
  """The default settings under a component config's field names (`derive` of `DEFAULTS`)."""
  return derive(DEFAULTS, names)


def derive(settings: Any, names: Mapping[str, str]) -> Dict[str, Any]:
  """The values of `settings` under a component config's field names."""
  return {field: getattr(settings, name) for field, name in names.items()}


DEFAULTS = Settings()  # after the rules: building it validates the defaults
