"""train_and_evaluate end to end on a tiny synthetic dataset: outputs, traces, sharding, resume."""

import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from d2e2s_jax import host_memory
from d2e2s_jax.data import batching
from d2e2s_jax.training import config as config_lib
from d2e2s_jax.training import optim, sharding, throughput, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = dict(synthetic=True, synthetic_sizes=(32, 8, 8), dataset="synthetic", encoder="scratch",
            scratch_hidden_size=16, scratch_layers=2, scratch_heads=2, scratch_intermediate_size=32,
            scratch_vocab_size=200, scratch_position_buckets=16, attention_heads=2, max_length=128,
            lr=1e-3, batch_size=8, eval_batch_size=8, epochs=1, log_every=1, progress_bar=False,
            max_decoded_spans=8)


def _train_shapes(data, config, steps):
  batch_config = config.batch_config(data.tokenizer, training=True)
  steps_per_epoch = len(data.encoded["train"]) // config.batch_size
  shapes = set()
  for step in range(steps):
    epoch, offset = divmod(step, steps_per_epoch)
    batch = next(itertools.islice(
        batching.train_batches(data.encoded["train"], batch_config, epoch, config.seed), offset, None))
    shapes.add(tuple(sorted((k, v.shape) for k, v in batch.items())))
  return shapes


def test_train_and_evaluate_writes_every_output(tmp_path):
  config = config_lib.TrainConfig(**TINY, max_steps=6, eval_every=3, checkpoint_every=3)
  results = trainer.train_and_evaluate(config, tmp_path)

  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) and r["learning_rate"] >= 0 for r in train)
  assert all(r["tokens_per_s"] > 0 and r["steps_per_s"] > 0 for r in train)
  assert not any("model_flops_utilization" in r for r in train)  # no known peak on the CPU
  assert [r["step"] for r in records if r["split"] == "dev"] == [3, 6]
  assert [r["step"] for r in records if r["split"] == "test"] == [3, 6]
  for key in ("triplet", "aspect", "opinion"):
    assert set(records[-1][key]) == {"precision", "recall", "f1", "gold", "predicted", "correct"}

  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert on_disk["best_step"] in (3, 6)
  assert on_disk["test"]["triplet"]["gold"] > 0
  assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
  # The best step's prediction files score, through the user's command, to results.json.
  for split in ("dev", "test"):
    gold = tmp_path / "data" / "aste" / "synthetic" / f"{split}_dep_triple_polarity_result.json"
    predictions = tmp_path / "predictions" / f"{split}_best.json"
    scored = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--gold={gold}",
                             f"--predictions={predictions}"], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert json.loads(scored.stdout) == on_disk[split], split
    records = json.loads(predictions.read_text())
    assert len(records) == 8 and all(0 <= s["score"] <= 1 for r in records for s in r["sentiments"])
  assert list((tmp_path / "tensorboard").iterdir())
  assert (tmp_path / "checkpoints" / "config.json").is_file()
  assert json.loads((tmp_path / "checkpoints" / "encoder_config.json").read_text())["hidden_size"] == 16
  assert (tmp_path / "checkpoints" / "tokenizer").is_dir()
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()) == ["3", "6"]

  # One compilation of the train step per distinct batch shape, none more.
  data = trainer.prepare_data(config, tmp_path)
  assert results["train_step_compilations"] == len(_train_shapes(data, config, 6))
  # Dev and test share one shape plan: one predict compilation per length bucket.
  eval_config = config.batch_config(data.tokenizer, training=False)
  lengths = {batch["input_ids"].shape for split in ("dev", "test")
             for batch in batching.eval_batches(data.encoded[split], eval_config)}
  assert results["predict_step_compilations"] == len(lengths)


def _train_step(config, data, mesh, steps, runtime=False):
  """(the jitted step, its initial state, the first `steps` training batches) of `config`."""
  model, model_config, _ = trainer.build_model(config, data.tokenizer)
  batch_config = config.batch_config(data.tokenizer, training=True)
  batches = list(itertools.islice(batching.train_batches(data.encoded["train"], batch_config, 0, 0), steps))
  optimizer_config = config.optimizer_config()
  optimizer = optim.make_optimizer(optimizer_config, 10)
  state, shardings = trainer.create_train_state(model, optimizer, batches[0], 0, mesh)
  step_fn = trainer.make_train_step(model, optimizer, optim.learning_rate_schedule(optimizer_config, 10),
                                    model_config, config.gradient_accumulation_steps, mesh, shardings,
                                    optim.make_update_fn(optimizer_config, 10, optimizer, slice_bytes=2048),
                                    hyper=trainer.runtime_hyperparameters(optimizer_config, model_config, 10)
                                    if runtime else None)
  return step_fn, state, batches


def _first_losses(config, data, mesh_spec, steps=3, runtime=False):
  mesh = sharding.make_mesh(mesh_spec)
  step_fn, state, batches = _train_step(config, data, mesh, steps, runtime)
  losses = []
  for batch in batches:
    state, metrics = step_fn(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return losses, state


def test_sharded_training_matches_one_device(tmp_path, monkeypatch):
  assert len(jax.devices()) == 8
  # Split the tiny head's larger arrays over fsdp too, as the xxlarge head's are.
  monkeypatch.setattr(sharding, "FSDP_FALLBACK_MIN_ELEMENTS", 256)
  config = config_lib.TrainConfig(**TINY)
  data = trainer.prepare_data(config, tmp_path)
  single, _ = _first_losses(config, data, "data:1")
  sharded, state = _first_losses(config, data, "data:4,fsdp:2")
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  # The encoder's embed axis really is split over fsdp.
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params["encoder"])}
  assert any("fsdp" in spec for spec in specs), specs
  word_embeddings = jax.tree.leaves(state.params["encoder"])[0]
  assert len(word_embeddings.sharding.device_set) == 8
  head_specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params["head"])}
  assert any("fsdp" in spec for spec in head_specs), head_specs


@pytest.mark.parametrize("lean", [dict(), dict(second_moment="factored", first_moment=False)])
def test_sliced_optimizer_update_matches_the_whole_one(tmp_path, lean):
  config = config_lib.TrainConfig(**{**TINY, **lean})
  data = trainer.prepare_data(config, tmp_path)
  whole_losses, whole = _first_losses(config, data, "data:1")
  sliced_losses, sliced = _first_losses(config.replace(optimizer_update="sliced"), data, "data:1")
  np.testing.assert_allclose(sliced_losses, whole_losses, rtol=1e-6)
  for got, want in zip(jax.tree.leaves((sliced.params, sliced.opt_state)),
                       jax.tree.leaves((whole.params, whole.opt_state))):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("update,accumulation,norms", [("whole", 1, 1), ("sliced", 1, 1), ("whole", 2, 2)])
def test_the_step_reads_the_gradient_once_for_its_norm(tmp_path, update, accumulation, norms):
  # The finite check's norm is the one clipping uses; with accumulation, clipping needs
  # the accumulated gradient's own norm. Counted: sums over the word-embedding gradient.
  config = config_lib.TrainConfig(**{**TINY, "optimizer_update": update,
                                     "gradient_accumulation_steps": accumulation})
  data = trainer.prepare_data(config, tmp_path)
  mesh = sharding.make_mesh("data:1")
  step_fn, state, (batch,) = _train_step(config, data, mesh, steps=1)
  text = step_fn.lower(state, sharding.shard_batch(batch, mesh)).as_text()
  embedding = jax.tree.leaves(state.params["encoder"]["embeddings"]["word_embeddings"])[0]
  operand = "tensor<" + "x".join(map(str, embedding.shape)) + "xf32>"
  sums = [line for line in text.splitlines()
          if "stablehlo.reduce" in line and "across dimensions = [0, 1]" in line and f"({operand}," in line]
  assert len(sums) == norms, sums


@pytest.mark.parametrize("update", ["whole", "sliced"])
def test_runtime_hyperparameters_compute_what_the_constants_compute(tmp_path, update):
  config = config_lib.TrainConfig(**{**TINY, "drop_out_rate": 0.3, "gcn_dropout": 0.2, "prop_drop": 0.15,
                                     "weight_decay": 0.05, "lr_warmup": 0.3, "kl_weight": 2.0,
                                     "optimizer_update": update})
  data = trainer.prepare_data(config, tmp_path)
  constant_losses, constant = _first_losses(config, data, "data:1")
  runtime_losses, runtime = _first_losses(config, data, "data:1", runtime=True)
  np.testing.assert_allclose(runtime_losses, constant_losses, rtol=1e-5)
  for got, want in zip(jax.tree.leaves((runtime.params, runtime.opt_state)),
                       jax.tree.leaves((constant.params, constant.opt_state))):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-4, atol=1e-6)


@pytest.fixture
def persistent_cache(tmp_path):
  """The persistent compilation cache in a fresh directory, for this test only."""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", before[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
  compilation_cache.reset_cache()


def test_runs_differing_only_in_runtime_hyperparameters_share_their_compiled_programs(tmp_path, persistent_cache):
  """The second run, with other lr, warmup, decay, dropouts, KL weight and threshold, compiles nothing."""
  base = config_lib.TrainConfig(**{**TINY, "max_steps": 2, "eval_every": 2, "checkpoint_every": 2})
  first = trainer.train_and_evaluate(base, tmp_path / "first")
  other = base.replace(lr=3e-4, lr_warmup=0.3, weight_decay=0.0, drop_out_rate=0.0, gcn_dropout=0.25,
                       prop_drop=0.4, kl_weight=1.0, sen_filter_threshold=0.7)
  second = trainer.train_and_evaluate(other, tmp_path / "second")
  assert first["compilation"]["persistent_cache_misses"] > 0
  assert second["compilation"]["persistent_cache_misses"] == 0, second["compilation"]
  assert second["compilation"]["persistent_cache_hits"] >= 2  # at least the train and predict steps
  # A setting that changes shapes does compile.
  third = trainer.train_and_evaluate(base.replace(batch_size=16), tmp_path / "third")
  assert third["compilation"]["persistent_cache_misses"] > 0


def _train_command(workdir, flagfile):
  return [sys.executable, "-m", "experiments.train", f"--flagfile={flagfile}", f"--workdir={workdir}"]


def _write_flagfile(path, **overrides):
  values = {**TINY, **overrides}
  lines = []
  for key, value in values.items():
    if isinstance(value, bool):
      lines.append(f"--{key}" if value else f"--no{key}")
    elif isinstance(value, tuple):
      lines.append(f"--{key}={','.join(str(v) for v in value)}")
    else:
      lines.append(f"--{key}={value}")
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
  flagfile = _write_flagfile(tmp_path / "run.flags", max_steps=8, checkpoint_every=2, eval_every=4)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  subprocess.run(_train_command(tmp_path / "full", flagfile), check=True, cwd=REPO, env=env,
                 capture_output=True)

  resumed = tmp_path / "resumed"
  process = subprocess.Popen(_train_command(resumed, flagfile), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (resumed / "checkpoints" / "latest" / "4").is_dir():
    assert process.poll() is None, "the run ended before its step-4 checkpoint"
    assert time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (resumed / "results.json").exists()
  subprocess.run(_train_command(resumed, flagfile), check=True, cwd=REPO, env=env, capture_output=True)

  def logged(path):  # the records without the rates, which are wall-clock measurements
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in throughput.RATE_KEYS} for record in records]

  assert logged(resumed / "metrics.jsonl") == logged(tmp_path / "full" / "metrics.jsonl")
  full_results = json.loads((tmp_path / "full" / "results.json").read_text())
  resumed_results = json.loads((resumed / "results.json").read_text())
  for key in ("best_step", "dev", "test"):
    assert resumed_results[key] == full_results[key]
  # The entry point configured host memory (its default) before the first computation.
  if host_memory.is_glibc():  # it restarted with the tunables
    assert full_results["host_memory"]["mode"] == "retain"


def test_entry_point_reports_bad_data_in_one_line(tmp_path):
  data_root = tmp_path / "data"
  split_dir = data_root / "aste" / "14res"
  split_dir.mkdir(parents=True)
  for split in ("train", "dev", "test"):
    (split_dir / f"{split}_dep_triple_polarity_result.json").write_text(
        json.dumps([{"tokens": ["good", "food"], "entities": [{"type": "target", "start": 1, "end": 5}],
                     "sentiments": [], "pos": [], "dependency": [], "orig_id": "x"}]))
  (data_root / "aste" / "types.json").write_text("{}")
  flagfile = _write_flagfile(tmp_path / "bad.flags", synthetic=False, dataset="14res",
                             data_dir=str(data_root))
  result = subprocess.run(_train_command(tmp_path / "run", flagfile), cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1, result.stderr
  assert "train_dep_triple_polarity_result.json" in error_lines[0] and "record 0" in error_lines[0]


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
  real_loss = trainer.losses.d2e2s_loss

  def poisoned_loss(outputs, batch, kl_weight):
    total, parts = real_loss(outputs, batch, kl_weight)
    return total * np.nan, parts

  monkeypatch.setattr(trainer.losses, "d2e2s_loss", poisoned_loss)
  config = config_lib.TrainConfig(**{**TINY, "max_steps": 4, "max_consecutive_skips": 2, "log_every": 1,
                                     "eval_every": 100, "checkpoint_every": 100})
  with pytest.raises(trainer.TrainingError, match="2 consecutive steps had a non-finite loss"):
    trainer.train_and_evaluate(config, tmp_path)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["skipped_steps"] for r in records] == [1, 2]
  assert not (tmp_path / "results.json").exists()

  # A skipped step leaves parameters and optimizer state exactly as they were.
  data = trainer.prepare_data(config, tmp_path)
  mesh = sharding.make_mesh("data:1")
  model, model_config, _ = trainer.build_model(config, data.tokenizer)
  batch = next(batching.train_batches(data.encoded["train"], config.batch_config(data.tokenizer, True), 0, 0))
  optimizer = optim.make_optimizer(config.optimizer_config(), 10)
  for update in ("whole", "sliced"):
    optimizer_config = config.replace(optimizer_update=update).optimizer_config()
    state, shardings = trainer.create_train_state(model, optimizer, batch, 0, mesh)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    step_fn = trainer.make_train_step(model, optimizer, optim.learning_rate_schedule(optimizer_config, 10),
                                      model_config, 1, mesh, shardings,
                                      optim.make_update_fn(optimizer_config, 10, optimizer, slice_bytes=2048))
    state, metrics = step_fn(state, sharding.shard_batch(batch, mesh))
    assert bool(metrics["skipped"]) and int(state.step) == 1 and int(state.consecutive_skips) == 1
    for got, want in zip(jax.tree.leaves((state.params, state.opt_state)), jax.tree.leaves(before)):
      np.testing.assert_array_equal(np.asarray(got), want)


def test_train_seeds_table(tmp_path, monkeypatch):
  def fake_run(config, workdir):
    f1 = 50.0 + config.seed
    block = {"triplet": {"precision": f1, "recall": f1, "f1": f1}}
    return {"best_step": 1, "dev": block, "test": block}

  monkeypatch.setattr(trainer, "train_and_evaluate", fake_run)
  summary = trainer.train_seeds(config_lib.TrainConfig(**TINY), tmp_path, [1, 2, 3])
  assert summary["summary"]["test"]["f1"] == {"mean": 52.0, "std": 1.0}
  assert "| test | 52.00 ± 1.00 | 52.00 ± 1.00 | 52.00 ± 1.00 |" in (tmp_path / "seeds.md").read_text()
  assert json.loads((tmp_path / "seeds.json").read_text())["summary"]["dev"]["f1"]["mean"] == 52.0


def test_pretrained_encoder_directory_is_loaded_into_the_model(tmp_path):
  """A local HF-format encoder (safetensors + SentencePiece tokenizer) becomes the model's encoder."""
  import torch
  import transformers
  from d2e2s_jax import tokenization
  from d2e2s_jax.data import synthetic
  from d2e2s_jax.models import deberta_v2_convert

  encoder_dir = tmp_path / "encoder"
  sentences = [" ".join(e.tokens) for e in synthetic.generate_synthetic_splits(0, {"train": 64})["train"]]
  tokenization.train_sentencepiece_tokenizer(sentences, encoder_dir, vocab_size=200)
  tokenizer = tokenization.load_tokenizer(encoder_dir)
  hf_config = transformers.DebertaV2Config(
      vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
      share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, max_relative_positions=-1)
  torch.manual_seed(0)
  transformers.DebertaV2Model(hf_config).save_pretrained(encoder_dir)

  config = config_lib.TrainConfig(**{**TINY, "encoder": str(encoder_dir)})
  data = trainer.prepare_data(config, tmp_path / "run")
  assert len(data.tokenizer) == len(tokenizer)
  model, model_config, pretrained = trainer.build_model(config, data.tokenizer)
  assert model_config.encoder.hidden_size == 16 and pretrained is not None
  mesh = sharding.make_mesh("data:1")
  batch_config = config.batch_config(data.tokenizer, training=True)
  batch = next(batching.train_batches(data.encoded["train"], batch_config, 0, 0))
  optimizer = optim.make_optimizer(config.optimizer_config(), 10)
  state, shardings = trainer.create_train_state(model, optimizer, batch, 0, mesh)
  state = trainer.with_pretrained_encoder(state, pretrained, shardings)
  _, expected = deberta_v2_convert.load_pretrained(str(encoder_dir))
  for got, want in zip(jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_an_evaluation_callback_stops_the_run_cleanly(tmp_path):
  seen = []

  def stop_at_the_second(step, scores):
    seen.append((step, scores["dev"]["triplet"]["f1"]))
    return len(seen) == 2

  config = config_lib.TrainConfig(**TINY, max_steps=8, eval_every=2, checkpoint_every=100)
  results = trainer.train_and_evaluate(config, tmp_path, on_evaluation=stop_at_the_second)
  assert [step for step, _ in seen] == [2, 4]
  assert results["stopped_at_step"] == 4 and results["best_step"] in (2, 4)
  assert json.loads((tmp_path / "results.json").read_text())["stopped_at_step"] == 4
  assert (tmp_path / "checkpoints" / "latest" / "4").is_dir()  # resumable from where it stopped
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in records) == 4
