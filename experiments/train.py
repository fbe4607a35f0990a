r"""Trains and evaluates D2E2S.

  python -m experiments.train --flagfile=experiments/configs/14res.flags --workdir=DIR

Every field of `d2e2s_jax.training.config.TrainConfig` is a flag of the same name.
`--seeds=1,2,3` runs one training per seed under `DIR/seed_<n>/` and writes the mean and
standard deviation of the test scores at the best dev step to `DIR/seeds.json` and
`DIR/seeds.md`. Errors in the input data or the flags end the run with one line and a
non-zero exit; checkpoints and logs already written stay.
"""

import dataclasses
import os
import sys
import typing

from absl import app
from absl import flags
from absl import logging

from d2e2s_jax.training import config as config_lib

HELP = {
    "dataset": "Dataset name: 14lap, 14res, 15res or 16res (or any name under --data_dir/aste).",
    "data_dir": "Data root holding aste/<dataset>/<split>_dep_triple_polarity_result.json; unset downloads "
                "the dataset into --cache_dir (needs internet).",
    "cache_dir": "Where downloaded datasets are kept.",
    "synthetic": "Use the project's deterministic synthetic review dataset (offline demo) instead of real data.",
    "synthetic_sizes": "Sentences in the synthetic train,dev,test splits.",
    "max_length": "Most sub-tokens per sentence, [CLS] and [SEP] included.",
    "truncate_long": "Truncate over-long sentences (dropping gold triplets that no longer fit) instead of failing.",
    "encoder": "Hugging Face model name or local directory of a DeBERTa-v2/v3 encoder, or 'scratch' for a "
               "randomly initialised small DeBERTa-v2 (see --scratch_*).",
    "tokenizer": "Tokenizer name or directory; default: the encoder's (or, for 'scratch', a SentencePiece model "
                 "trained on the training sentences).",
    "scratch_hidden_size": "Width of the from-scratch encoder.",
    "scratch_layers": "Layers of the from-scratch encoder.",
    "scratch_heads": "Attention heads of the from-scratch encoder.",
    "scratch_intermediate_size": "FFN width of the from-scratch encoder.",
    "scratch_vocab_size": "SentencePiece vocabulary size for the from-scratch encoder.",
    "scratch_position_buckets": "Relative position buckets of the from-scratch encoder.",
    "remat_policy": "Rematerialise encoder layers in the backward pass: none, full, dots or dots_no_batch.",
    "compute_dtype": "Compute dtype: float32 or bfloat16 (parameters stay float32).",
    "hidden_dim": "Units per direction of the BiLSTM channel; 0 = half the encoder width (required by the model).",
    "lstm_layers": "Layers of the BiLSTM channel.",
    "drop_out_rate": "Dropout of the BiLSTM channel.",
    "gcn_layers": "Layers of SynGCN and SemGCN.",
    "gcn_dropout": "Dropout between GCN layers.",
    "attention_heads": "Heads of SemGCN's attention graph.",
    "prop_drop": "Dropout on the span and pair classifier inputs.",
    "size_embedding": "Width of the span size embedding.",
    "max_span_size": "Longest candidate span, in words.",
    "sen_filter_threshold": "Sigmoid threshold of a sentiment at decoding (0.4 in the paper's code).",
    "max_decoded_spans": "Spans kept per sentence at decoding (top-k of the non-None spans).",
    "kl_weight": "Weight of the syntactic/semantic KL term in the loss.",
    "kl_differentiable": "Let gradients flow through the KL term (the released code does not).",
    "graph_implementation": "GCN implementation: dense (batched matmuls) or jraph (message passing).",
    "released_graph": "Build the syntactic graph as the released code does (to reproduce published numbers).",
    "batch_size": "Training sentences per step.",
    "eval_batch_size": "Sentences per evaluation batch.",
    "neg_entity_count": "Negative spans sampled per sentence; -1 = all (the released behaviour).",
    "neg_triple_count": "Negative pairs sampled per sentence; -1 = all (the released behaviour).",
    "length_grouping_batches": "0 = uniformly shuffled batches; k > 0 groups k batches' sentences by length.",
    "lr": "Peak learning rate.",
    "lr_warmup": "Fraction of the steps spent in linear warmup.",
    "weight_decay": "AdamW weight decay (not on biases and LayerNorm).",
    "max_grad_norm": "Global-norm gradient clipping; <= 0 disables.",
    "bias_correction": "Adam bias correction (the released optimizer has none).",
    "gradient_accumulation_steps": "Micro-batches accumulated per optimizer update.",
    "moment_dtype": "Storage dtype of the optimizer's moments (e.g. bfloat16 halves them); unset = float32.",
    "second_moment": "full (Adam) or factored (row/column second moments: a memory-lean Adam approximation).",
    "first_moment": "Keep Adam's first moment (b1 = 0.9); --nofirst_moment drops it (b1 = 0), saving one "
                    "parameter-sized state.",
    "optimizer_update": "whole (the optax chain over all parameters) or sliced (the same arithmetic applied "
                        "in place one layer / row block at a time: its temporaries are one slice big; "
                        "no gradient accumulation).",
    "epochs": "Training epochs.",
    "max_steps": "Stop after this many steps, overriding --epochs (0 = use --epochs).",
    "seed": "Random seed (initialisation, sampling, dropout).",
    "eval_every": "Evaluate on dev (and test) every N steps; 0 = once per epoch.",
    "checkpoint_every": "Save a resumable checkpoint every N steps; 0 = once per epoch.",
    "log_every": "Write training metrics every N steps.",
    "max_consecutive_skips": "Stop the run after this many consecutive non-finite steps.",
    "mesh": "Device mesh, e.g. 'data:4,fsdp:2' (axes data, fsdp, tensor); empty = all devices on data.",
    "evaluate_test": "Also evaluate the test split at every evaluation.",
    "progress_bar": "Show a progress bar.",
}

_DEFAULTS = config_lib.TrainConfig()


def _define_config_flags() -> None:
  hints = typing.get_type_hints(config_lib.TrainConfig)
  for field in dataclasses.fields(config_lib.TrainConfig):
    default = getattr(_DEFAULTS, field.name)
    hint = hints[field.name]
    help_text = HELP[field.name]
    if hint is bool:
      flags.DEFINE_bool(field.name, default, help_text)
    elif hint is int:
      flags.DEFINE_integer(field.name, default, help_text)
    elif hint is float:
      flags.DEFINE_float(field.name, default, help_text)
    elif typing.get_origin(hint) is tuple:
      flags.DEFINE_list(field.name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(field.name, default, help_text)


_define_config_flags()
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", required=True)
flags.DEFINE_list("seeds", [], "Several seeds: one run per seed and a mean/std table (overrides --seed).")
flags.DEFINE_string("compilation_cache_dir", "~/.cache/d2e2s_jax/xla",
                    "Persistent XLA compilation cache (reruns, resumes and --seeds skip recompiling); "
                    "empty disables it.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: address of process 0 for jax.distributed.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")

FLAGS = flags.FLAGS


def config_from_flags() -> config_lib.TrainConfig:
  values = {}
  hints = typing.get_type_hints(config_lib.TrainConfig)
  for field in dataclasses.fields(config_lib.TrainConfig):
    value = FLAGS[field.name].value
    if typing.get_origin(hints[field.name]) is tuple:
      value = tuple(int(v) for v in value)
    elif value == "" and getattr(_DEFAULTS, field.name) is None:
      value = None
    values[field.name] = value
  return config_lib.TrainConfig(**values)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    # Orbax logs every save at INFO; keep the console to the progress bar and results.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.coordinator_address:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.compilation_cache_dir:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from d2e2s_jax.data import download  # pylint: disable=g-import-not-at-top
  from d2e2s_jax.training import trainer  # pylint: disable=g-import-not-at-top  # heavy
  try:
    config = config_from_flags()
    if FLAGS.seeds:
      summary = trainer.train_seeds(config, FLAGS.workdir, [int(s) for s in FLAGS.seeds])
      print(summary["markdown"])
    else:
      results = trainer.train_and_evaluate(config, FLAGS.workdir)
      logging.info("results: %s", results)
      best = results["test"] or results["dev"]
      print(f"best dev step {results['best_step']}: dev triplet F1 {results['dev']['triplet']['f1']:.2f}"
            + (f", test triplet F1 {best['triplet']['f1']:.2f}" if results["test"] else ""))
  except (ValueError, OSError, trainer.TrainingError, download.DownloadError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
