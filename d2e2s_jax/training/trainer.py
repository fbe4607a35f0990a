"""Training and evaluation of D2E2S: `train_and_evaluate(config, workdir)`.

Data flow of a run:

1. `prepare_data`: the dataset (downloaded, given, or the synthetic demo set), the
   tokenizer (pretrained, or SentencePiece trained on the training sentences for a
   from-scratch encoder) and the sub-token encoding of every split.
2. `build_model`: the D2E2S model config and, for a pretrained encoder, its weights.
3. `create_train_state`: parameters and optimizer state initialised under `jax.jit` with
   the shardings that the logical-axis rules give on the mesh (built abstractly first,
   so nothing is materialised on one device).
4. The loop: one jitted `train_step` (donated state, explicit shardings, dropout RNG
   folded with the step), evaluation on dev (and test) every `eval_every` steps through
   the one prediction path (`d2e2s_jax.prediction`), Orbax checkpoints every `checkpoint_every` steps plus the best
   by dev triplet F1, `metrics.jsonl`/TensorBoard logs, and `results.json` at the end.

Resume is exact: batches are a pure function of (seed, epoch, position), the dropout RNG
of step s is fold_in(seed key, s), and a restarted run takes the newest checkpoint,
trims the logs written after it and replays the epoch from the same position.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from d2e2s_jax import fileio
from d2e2s_jax import host_memory
from d2e2s_jax import prediction
from d2e2s_jax import tokenization
from d2e2s_jax.data import batching, download, encoding, readers, synthetic
from d2e2s_jax.data.examples import DataError, Example
from d2e2s_jax.models import d2e2s, losses
from d2e2s_jax.models import deberta_v2_convert
from d2e2s_jax.training import checkpoints, metrics_log, optim, sharding, throughput
from d2e2s_jax.training.config import SCRATCH, TrainConfig

SPLITS = ("train", "dev", "test")
PREDICTIONS_DIR = "predictions"  # <split>_best.json: the best dev step's predictions


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. too many consecutive non-finite steps)."""


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; checkpointed as is."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data of the run's base dropout key
  consecutive_skips: jax.Array  # non-finite steps in a row, now
  max_consecutive_skips: jax.Array  # the longest such run so far
  total_skips: jax.Array


@dataclasses.dataclass
class Data:
  """A run's dataset: examples and encodings per split, and the tokenizer."""

  tokenizer: Any
  examples: Dict[str, List[Example]]
  encoded: Dict[str, List[encoding.EncodedExample]]
  data_root: Optional[pathlib.Path]


# --------------------------------------------------------------------------- data


def prepare_data(config: TrainConfig, workdir: pathlib.Path) -> Data:
  """Reads (or generates) the splits, gets the tokenizer and encodes every sentence."""
  if config.synthetic:
    data_root = workdir / "data"
    synthetic.write_synthetic_dataset(data_root / "aste" / config.dataset, seed=config.seed,
                                      sizes=dict(zip(SPLITS, config.synthetic_sizes)))
    split_paths = {split: data_root / "aste" / config.dataset / f"{split}_dep_triple_polarity_result.json"
                   for split in SPLITS}
  else:
    data_root = download.ensure_dataset(config.data_dir, config.dataset,
                                        os.path.expanduser(config.cache_dir))
    split_paths = {split: readers.dataset_paths(data_root, config.dataset, split) for split in SPLITS}
  examples = {split: readers.read_examples(path, "d2e2s") for split, path in split_paths.items()}
  for split, items in examples.items():
    if not items:
      raise TrainingError(f"{split_paths[split]}: the {split} split has no sentences")

  tokenizer = load_or_train_tokenizer(config, examples["train"], workdir / "tokenizer")
  overflow = "truncate" if config.truncate_long else "error"
  encoded = {}
  for split, items in examples.items():
    try:
      encoded[split] = encoding.encode_examples(items, tokenizer, max_length=config.max_length,
                                                on_overflow=overflow)
    except DataError as e:
      raise DataError(f"{split_paths[split]}: {e} (or pass --truncate_long)") from None
  return Data(tokenizer=tokenizer, examples=examples, encoded=encoded, data_root=data_root)


def load_or_train_tokenizer(config: TrainConfig, train_examples: Sequence[Example],
                            scratch_dir: pathlib.Path) -> Any:
  """The pretrained tokenizer, or (scratch encoder) SentencePiece trained on train text."""
  if config.tokenizer:
    return tokenization.load_tokenizer(config.tokenizer)
  if config.encoder != SCRATCH:
    return tokenization.load_tokenizer(config.encoder)
  if not (scratch_dir / "spm.model").is_file():
    tokenization.train_sentencepiece_tokenizer(
        (" ".join(example.tokens) for example in train_examples), scratch_dir,
        vocab_size=config.scratch_vocab_size)
  return tokenization.load_tokenizer(scratch_dir)


# -------------------------------------------------------------------------- model


def build_model(config: TrainConfig, tokenizer: Any) -> Tuple[d2e2s.D2E2S, d2e2s.D2E2SConfig, Optional[Any]]:
  """The model, its config and (for a pretrained encoder) the encoder's parameters."""
  if config.encoder == SCRATCH:
    encoder_config, pretrained = config.encoder_config(tokenizer), None
  else:
    # Read as numpy and placed shard by shard later: a 1.5B-parameter encoder never has to
    # fit on one device.
    encoder_config, pretrained = deberta_v2_convert.read_pretrained(config.encoder)
  model_config = config.model_config(encoder_config)
  return d2e2s.D2E2S(model_config), model_config, pretrained


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                       example_batch: Mapping[str, np.ndarray], seed: int,
                       mesh: jax.sharding.Mesh) -> Tuple[TrainState, Any]:
  """Initialises the state under jit with the logical-axis shardings; returns (state, shardings)."""
  init_batch = {key: jnp.asarray(value) for key, value in example_batch.items()}

  def init(rng):
    params = d2e2s.init_params(model, init_batch, rng)
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
        consecutive_skips=jnp.zeros([], jnp.int32),
        max_consecutive_skips=jnp.zeros([], jnp.int32),
        total_skips=jnp.zeros([], jnp.int32),
    )

  rng = jax.random.key(seed)
  abstract = jax.eval_shape(init, rng)
  state_shardings = sharding.logical_shardings(abstract, mesh)
  state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=state_shardings)(rng)
  return state, state_shardings


def with_pretrained_encoder(state: TrainState, encoder_params: Any, shardings: TrainState) -> TrainState:
  """Replaces the randomly initialised encoder with pretrained weights (same shardings)."""
  if jax.tree.structure(state.params["encoder"]) != jax.tree.structure(encoder_params):
    raise TrainingError("the pretrained encoder's parameters do not match the model's encoder")
  placed = jax.tree.map(lambda value, target, s: jax.device_put(jnp.asarray(value, target.dtype), s),
                        encoder_params, state.params["encoder"], shardings.params["encoder"])
  return state.replace(params={**state.params, "encoder": placed})


# ------------------------------------------------------------------------- steps


def runtime_hyperparameters(optimizer_config: optim.OptimizerConfig, model_config: d2e2s.D2E2SConfig,
                            total_updates: int) -> Dict[str, Any]:
  """The values the training step takes as runtime inputs rather than compiled constants.

  The peak learning rate, warmup length and weight decay (`optim.RUNTIME_INPUTS`), the
  head's dropout rates (`d2e2s.RUNTIME_RATES`) and the KL weight: the trials of a search
  that differ only in these run the same compiled program (served by the persistent
  compilation cache, `--compilation_cache_dir`), instead of compiling one each.
  """
  return {"optimizer": optimizer_config.runtime_inputs(total_updates),
          "rates": model_config.runtime_rates(),
          "kl_weight": jnp.float32(model_config.kl_weight)}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    model_config: d2e2s.D2E2SConfig, accumulation_steps: int, mesh: jax.sharding.Mesh,
                    state_shardings: Any, update_fn: Optional[optim.UpdateFn] = None,
                    hyper: Optional[Mapping[str, Any]] = None):
  """The jitted training step `step(state, batch) -> (state, metrics)`.

  Loss, gradients, a finite-guarded optimizer update. A step whose loss or gradients are
  not finite leaves parameters and optimizer state unchanged and is counted
  (`consecutive_skips`, `total_skips`); the host stops the run when a run of them gets
  too long. `update_fn` applies the optimizer (`optim.make_update_fn`; default:
  `optimizer`'s chain over the whole tree). `hyper` (`runtime_hyperparameters`) makes
  those values arguments of the compiled program, passed to every call; without it
  they are the configs' constants. The function also has `lower(state, batch)`,
  `runtime_values` and `trace_count()` (see `sharding.bind_runtime_values`).
  """
  update_fn = update_fn or optim.whole_update_fn(optimizer)
  traces = [0]

  def train_step(state: TrainState, batch: Dict[str, jax.Array], hyper: Optional[Mapping[str, Any]]):
    traces[0] += 1
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    hyper = hyper or {}
    kl_weight = hyper.get("kl_weight", model_config.kl_weight)
    optimizer_hyper = hyper.get("optimizer", {})

    def loss_fn(params):
      outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": dropout_rng},
                            rates=hyper.get("rates"))
      return losses.d2e2s_loss(outputs, batch, kl_weight)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Any inf or NaN gradient makes the norm non-finite (so does a norm beyond float32's
    # range, a step worth skipping too); unlike an isfinite mask per leaf, it needs no
    # parameter-sized temporaries (up to 1.6 GB on the xxlarge model).
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # Clipping reuses this norm; with accumulation it clips the accumulated gradient instead.
    new_params, new_opt_state = update_fn(grads, state.opt_state, state.params, finite, optimizer_hyper,
                                          grad_norm=grad_norm if accumulation_steps == 1 else None)
    consecutive = jnp.where(finite, 0, state.consecutive_skips + 1)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        consecutive_skips=consecutive,
        max_consecutive_skips=jnp.maximum(state.max_consecutive_skips, consecutive),
        total_skips=state.total_skips + (~finite).astype(jnp.int32),
    )
    applied_updates = (state.step - state.total_skips) // accumulation_steps
    metrics = {
        "loss": loss,
        "entity_loss": parts["entity"],
        "sentiment_loss": parts["sentiment"],
        "kl_term": parts["kl_term"],
        "grad_norm": grad_norm,
        "learning_rate": schedule(applied_updates, optimizer_hyper.get("learning_rate"),
                                  optimizer_hyper.get("warmup_steps")),
        "skipped": ~finite,
        "total_skips": new_state.total_skips,
        "max_consecutive_skips": new_state.max_consecutive_skips,
    }
    return new_state, metrics

  batch_sharding = sharding.batch_sharding(mesh)
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  return sharding.bind_runtime_values(jitted, None if hyper is None else dict(hyper), mesh, traces)


# -------------------------------------------------------------------------- loop


def _progress(total: int, initial: int, enabled: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
              dynamic_ncols=True)


# Called after every evaluation with (step, {"dev": scores[, "test": scores]}); a true
# return value stops the run there (a hyperparameter search's pruner).
EvaluationCallback = Callable[[int, Dict[str, Dict[str, Dict[str, float]]]], bool]


def train_and_evaluate(config: TrainConfig, workdir: os.PathLike,
                       on_evaluation: Optional[EvaluationCallback] = None) -> Dict[str, Any]:
  """Trains, evaluates and checkpoints one run; returns (and writes) `results.json`.

  Args:
    config: the run's settings.
    workdir: its directory (resumed from its newest checkpoint when it has one).
    on_evaluation: see `EvaluationCallback`. A run it stops ends cleanly at that step: a
      checkpoint of it, its logs and `results.json` (with `stopped_at_step`) are written.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  compile_clock = throughput.CompileClock()
  mesh = sharding.make_mesh(config.mesh)
  data = prepare_data(config, workdir)
  model, model_config, pretrained = build_model(config, data.tokenizer)
  train_batch_config = config.batch_config(data.tokenizer, training=True)
  eval_batch_config = config.batch_config(data.tokenizer, training=False)

  steps_per_epoch = len(data.encoded["train"]) // config.batch_size
  if steps_per_epoch == 0:
    raise TrainingError(f"the training split has {len(data.encoded['train'])} sentences, fewer than one "
                        f"batch of {config.batch_size}")
  total_steps = config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch
  eval_every = config.eval_every or steps_per_epoch
  checkpoint_every = config.checkpoint_every or steps_per_epoch
  optimizer_config = config.optimizer_config()
  updates = math.ceil(total_steps / optimizer_config.gradient_accumulation_steps)
  optimizer = optim.make_optimizer(optimizer_config, updates)
  schedule = optim.learning_rate_schedule(optimizer_config, updates)

  # Graphs and shape plans once per run, not per epoch; dev and test share one plan so
  # the predict step compiles once per length bucket for both.
  train_planned = batching.plan_dataset(data.encoded["train"], train_batch_config, train=True)
  eval_planned = {split: batching.plan_dataset(data.encoded[split], eval_batch_config, train=False)
                  for split in ("dev", "test")}
  eval_shapes = eval_planned["dev"].shapes.merge(eval_planned["test"].shapes)
  eval_planned = {split: planned.with_shapes(eval_shapes) for split, planned in eval_planned.items()}
  first_batch = next(batching.train_batches(data.encoded["train"], train_batch_config, 0, config.seed,
                                            train_planned))
  state, state_shardings = create_train_state(model, optimizer, first_batch, config.seed, mesh)
  if pretrained is not None:
    state = with_pretrained_encoder(state, pretrained, state_shardings)

  ckpts = checkpoints.Checkpoints(workdir)
  ckpts.save_config(config.to_json(), data.tokenizer)
  # The encoder's architecture too, so that a checkpoint of a pretrained run can be
  # rebuilt without the hub (d2e2s_jax/inference.py reads it).
  fileio.write_json_atomic(ckpts.directory / "encoder_config.json", model_config.encoder.to_hf_dict())
  restored = ckpts.restore_latest(checkpoints.abstract_like(state))
  best: Optional[Dict[str, Any]] = None
  if restored is not None:
    state, meta = restored
    best = meta.get("best")
    logging.info("resuming from step %d", int(state.step))
  start_step = int(state.step)
  log = metrics_log.MetricsLog(workdir, resume_step=start_step if restored is not None else None)

  train_step = make_train_step(model, optimizer, schedule, model_config,
                               optimizer_config.gradient_accumulation_steps, mesh, state_shardings,
                               optim.make_update_fn(optimizer_config, updates, optimizer),
                               hyper=runtime_hyperparameters(optimizer_config, model_config, updates))
  predict_step = prediction.make_predict_step(model, mesh, state_shardings.params,
                                              threshold=model_config.sen_filter_threshold)

  def run_eval(step: int) -> bool:
    """Evaluates; True when `on_evaluation` asks to stop."""
    nonlocal best
    scores, predicted = {}, {}
    for split in ("dev", "test") if config.evaluate_test else ("dev",):
      predicted[split] = prediction.predict(predict_step, state.params, data.encoded[split], eval_batch_config,
                                            mesh, eval_planned[split])
      scores[split] = prediction.score(data.examples[split], predicted[split])
    for split, split_scores in scores.items():
      log.write(step, split, split_scores)
    dev_f1 = scores["dev"]["triplet"]["f1"]
    if best is None or dev_f1 > best["dev"]["triplet"]["f1"]:
      best = {"step": step, **scores}
      # The best step's predictions, for experiments.evaluate / analyze (their scores are
      # exactly these); written before the checkpoint that records this step as best.
      (workdir / PREDICTIONS_DIR).mkdir(exist_ok=True)
      for split, split_predictions in predicted.items():
        prediction.write_predictions(data.examples[split], split_predictions,
                                     workdir / PREDICTIONS_DIR / f"{split}_best.json")
      ckpts.save_best(step, state, {"best": best}, dev_f1)
    return bool(on_evaluation and on_evaluation(step, scores))

  step = start_step
  progress = _progress(total_steps, start_step, config.progress_bar)
  meter = throughput.Meter(model_config, mesh.devices.flat)
  stopped_at: Optional[int] = None
  try:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      epoch_batches = batching.train_batches(data.encoded["train"], train_batch_config, epoch, config.seed,
                                             train_planned)
      for batch in itertools.islice(epoch_batches, offset, steps_per_epoch):
        state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
        meter.add(batch)
        step += 1
        progress.update(1)
        if step % config.log_every == 0 or step == total_steps:
          values = {k: v.item() for k, v in jax.device_get(metrics).items()}
          # Over the steps since the last log line (evaluation and checkpoints left out;
          # the first interval includes compilation).
          rates = meter.read()
          log.write(step, "train", {"loss": values["loss"], "learning_rate": values["learning_rate"],
                                    "entity_loss": values["entity_loss"],
                                    "sentiment_loss": values["sentiment_loss"], "kl_term": values["kl_term"],
                                    "grad_norm": values["grad_norm"], "skipped_steps": values["total_skips"],
                                    **{k: v for k, v in rates.items() if v is not None}})
          postfix = {"loss": f"{values['loss']:.4f}", "lr": f"{values['learning_rate']:.2e}",
                     "tokens_per_s": f"{rates['tokens_per_s']:.0f}"}
          if rates["model_flops_utilization"] is not None:
            postfix["mfu"] = f"{100 * rates['model_flops_utilization']:.1f}%"
          progress.set_postfix(postfix)
          if values["max_consecutive_skips"] >= config.max_consecutive_skips:
            raise TrainingError(
                f"stopping at step {step}: {values['max_consecutive_skips']} consecutive steps had a non-finite "
                f"loss or gradient (limit --max_consecutive_skips={config.max_consecutive_skips}); lower --lr or "
                f"check the data. The last checkpoint is in {ckpts.directory}")
        if step % eval_every == 0 or step == total_steps:
          stopped_at = step if run_eval(step) else None
          meter.restart()
        if step % checkpoint_every == 0 or step == total_steps or stopped_at is not None:
          ckpts.save_latest(step, state, {"best": best, "epoch": epoch})
          meter.restart()
        if step >= total_steps or stopped_at is not None:
          break
      if stopped_at is not None:
        break
  finally:
    progress.close()
    ckpts.wait()
    ckpts.close()
    log.close()

  results = {
      "best_step": best["step"],
      "dev": best["dev"],
      "test": best.get("test"),
      "total_steps": total_steps,
      "steps_per_epoch": steps_per_epoch,
      "train_step_compilations": train_step.trace_count(),
      "predict_step_compilations": predict_step.trace_count(),
      # This process's compilation time (a resumed run: since it resumed) and its use of
      # the persistent cache.
      "compilation": compile_clock.read(),
      # How the process reuses freed host memory (`host_memory.current`; the entry
      # points' --host_memory).
      "host_memory": host_memory.current(),
  }
  if stopped_at is not None:
    results["stopped_at_step"] = stopped_at
  fileio.write_json_atomic(workdir / "results.json", results)
  metrics_log.plot_curves(metrics_log.read_metrics(log.path), workdir / "curves.png")
  return results


def train_seeds(config: TrainConfig, workdir: os.PathLike, seeds: Sequence[int]) -> Dict[str, Any]:
  """One run per seed under `workdir/seed_<n>`, then the mean and standard deviation.

  Writes `seeds.json` (per-seed results and the summary) and `seeds.md` (a table of the
  triplet precision/recall/F1 on dev and test at each run's best dev step; standard
  deviation with ddof=1).
  """
  workdir = pathlib.Path(workdir)
  runs = {int(seed): train_and_evaluate(config.replace(seed=int(seed)), workdir / f"seed_{seed}")
          for seed in seeds}
  summary: Dict[str, Dict[str, Dict[str, float]]] = {}
  for split in ("dev", "test"):
    if any(run.get(split) is None for run in runs.values()):
      continue
    summary[split] = {}
    for metric in ("precision", "recall", "f1"):
      values = np.asarray([run[split]["triplet"][metric] for run in runs.values()])
      summary[split][metric] = {"mean": float(values.mean()),
                                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
  lines = [f"Triplet scores over seeds {', '.join(str(s) for s in runs)} (mean ± std, %)", "",
           "| split | precision | recall | F1 |", "|---|---|---|---|"]
  for split, metrics in summary.items():
    cells = [f"{metrics[m]['mean']:.2f} ± {metrics[m]['std']:.2f}" for m in ("precision", "recall", "f1")]
    lines.append(f"| {split} | " + " | ".join(cells) + " |")
  markdown = "\n".join(lines) + "\n"
  fileio.write_json_atomic(workdir / "seeds.json", {"runs": {str(k): v for k, v in runs.items()}, "summary": summary})
  (workdir / "seeds.md").write_text(markdown)
  return {"runs": runs, "summary": summary, "markdown": markdown}
