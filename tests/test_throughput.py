"""d2e2s_jax.training.throughput: the FLOPs model against XLA's count and hand counts; peaks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2e2s_jax.models import d2e2s, deberta_v2
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config
from d2e2s_jax.training import throughput


def encoder_config(hidden=64, layers=2, ffn=128, buckets=8, heads=2, vocab=300):
  """A small DeBERTa-v2 in the xxlarge's style (relative buckets, shared keys, conv)."""
  return DebertaV2Config(
      vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=ffn, hidden_act="gelu", relative_attention=True, position_buckets=buckets,
      max_relative_positions=-1, pos_att_type=("p2c", "c2p"), share_att_key=True, norm_rel_ebd="layer_norm",
      position_biased_input=False, conv_kernel_size=3, conv_act="gelu", type_vocab_size=0)


def model_config(hidden=64, size_embedding=25):
  return d2e2s.D2E2SConfig(hidden_size=hidden, attention_heads=2, size_embedding=size_embedding,
                           encoder=encoder_config(hidden))


def contract_batch(b, t, s, p=None, e=None):
  """Zero arrays of the batch contract's shapes (`p=None`: an evaluation batch, no pairs)."""
  e = 4 * t if e is None else e
  batch = {"input_ids": np.zeros((b, t), np.int32), "attention_mask": np.ones((b, t), np.int32),
           "span_token_bounds": np.tile(np.asarray([0, 1], np.int32), (b, s, 1)),
           "span_word_bounds": np.tile(np.asarray([0, 1], np.int32), (b, s, 1)),
           "span_sizes": np.ones((b, s), np.int32), "span_mask": np.ones((b, s), bool),
           "span_labels": np.zeros((b, s), np.int32), "graph_senders": np.zeros((b, e), np.int32),
           "graph_receivers": np.zeros((b, e), np.int32), "graph_edge_mask": np.zeros((b, e), bool),
           "example_index": np.arange(b, dtype=np.int32), "example_mask": np.ones(b, bool)}
  if p is not None:
    batch.update(pair_indices=np.zeros((b, p, 2), np.int32), pair_mask=np.ones((b, p), bool),
                 pair_labels=np.zeros((b, p, 4), np.float32))
  return batch


def test_encoder_flops_match_xla_count_forward_and_backward():
  # One layer: nothing under nn.scan, so XLA's cost analysis sees all the work. XLA also
  # counts elementwise work (softmax, norms, gelu), which the model leaves out: a few %.
  config = encoder_config(hidden=256, layers=1, ffn=512, buckets=32, heads=4, vocab=64)
  model = deberta_v2.DebertaV2Model(config)
  params = deberta_v2.init_params(model, jax.random.key(0))
  ids, mask = jnp.ones((2, 64), jnp.int32), jnp.ones((2, 64), jnp.int32)
  forward = lambda p: model.apply({"params": p}, ids, mask)
  xla_forward = throughput.compiled_flops(jax.jit(forward).lower(params).compile())
  xla_training = throughput.compiled_flops(
      jax.jit(jax.grad(lambda p: jnp.sum(forward(p)))).lower(params).compile())
  dense = throughput.dense_parameter_counts(params)
  analytic_forward = throughput.analytic_flops(config, dense, 2, 64, training=False)
  analytic_training = throughput.analytic_flops(config, dense, 2, 64, training=True)
  assert analytic_training == 3 * analytic_forward
  assert 1.0 <= xla_forward / analytic_forward < 1.06
  assert 1.0 <= xla_training / analytic_training < 1.05


def test_encoder_dense_count_by_hand():
  # Per layer Q, K, V, output projections (4 d^2) and the FFN (2 d f); the conv layer
  # (kernel 3) once; embeddings, biases and norms are not per-token matmuls.
  config = encoder_config(hidden=64, layers=3, ffn=96)
  params = deberta_v2.init_params(deberta_v2.DebertaV2Model(config), jax.random.key(0))
  assert throughput.dense_parameter_counts(params) == {
      "per_token": 3 * (4 * 64 * 64 + 2 * 64 * 96) + 3 * 64 * 64, "per_span": 0, "per_pair": 0}


def test_model_counts_from_the_config_are_those_of_real_parameters():
  config = model_config(hidden=64, size_embedding=10)
  real = d2e2s.init_params(d2e2s.D2E2S(config), contract_batch(2, 16, 5, 3), jax.random.key(1))
  counts = throughput.model_dense_parameter_counts(config)
  assert counts == throughput.dense_parameter_counts(real)
  # The span classifier reads [CLS], the span's pool and its size embedding (3 outputs);
  # the pair classifier the context between, both pools and both size embeddings (4).
  assert counts["per_span"] == (2 * 64 + 10) * 3
  assert counts["per_pair"] == (3 * 64 + 2 * 10) * 4
  assert counts["per_token"] > throughput.dense_parameter_counts(
      deberta_v2.init_params(deberta_v2.DebertaV2Model(config.encoder), jax.random.key(0)))["per_token"]


def test_step_flops_from_config_params_and_batch_agree():
  config = model_config()
  params = d2e2s.init_params(d2e2s.D2E2S(config), contract_batch(1, 8, 1, 1), jax.random.key(0))
  step = throughput.train_step_flops(config, 4, 32, 20, 12)
  assert step == 3 * throughput.forward_flops(config, 4, 32, 20, 12)
  assert step == throughput.train_step_flops(config, 4, 32, 20, 12, params=params)
  dense = throughput.model_dense_parameter_counts(config)
  assert step == throughput.analytic_flops(config.encoder, dense, 4, 32, 20, 12, training=True)
  assert throughput.batch_flops(config, contract_batch(4, 32, 20, 12)) == step
  # An evaluation batch has no pair_mask: no pairs counted.
  eval_batch = contract_batch(4, 32, 20)
  assert throughput.batch_flops(config, eval_batch, training=False) == throughput.forward_flops(config, 4, 32, 20)
  # Spans and pairs add their classifiers' FLOPs only.
  extra = throughput.forward_flops(config, 4, 32, 21, 13) - throughput.forward_flops(config, 4, 32, 20, 12)
  assert extra == 2 * 4 * (dense["per_span"] + dense["per_pair"])


def test_xxlarge_step_is_about_six_n_d():
  # 6 N D with N ~ 1.36e9 per-token encoder weights and D = 16 x 128 tokens, plus attention.
  config = encoder_config(hidden=1536, layers=48, ffn=6144, buckets=256, heads=24, vocab=128100)
  flops = throughput.analytic_flops(config, {"per_token": 1_360_000_000}, 16, 128)
  assert 6 * 1.36e9 * 2048 < flops < 1.2 * 6 * 1.36e9 * 2048


def test_peak_lookup():
  assert throughput.find_peak("NVIDIA H200", "bfloat16") == throughput.Peak(989.0, "bfloat16", "h200")
  with jax.default_matmul_precision("default"):  # conftest asks for full float32 matmuls
    assert throughput.peak_flops_per_s("NVIDIA H200", "float32") == 494e12  # TF32
  assert throughput.peak_flops_per_s("NVIDIA H100 PCIe", "bfloat16") == 756e12  # before "h100"
  assert throughput.peak_flops_per_s("TPU v5 lite", "bfloat16") == 197e12
  with jax.default_matmul_precision("highest"):
    assert throughput.matmul_precision_class("float32") == "float32"
    assert throughput.peak_flops_per_s("NVIDIA A100-SXM4-80GB", "float32") == 19.5e12
    assert throughput.find_peak("TPU v4", "float32") is None  # no full-float32 TPU peak
  assert throughput.find_peak("cpu", "bfloat16") is None
  assert throughput.peak_flops_per_s(jax.devices()[0], "float32") is None  # the tests' CPU device


def test_utilisation():
  assert throughput.utilisation(3e12, 0.5, 12e12) == pytest.approx(0.5)
  assert throughput.utilisation(3e12, 0.5, None) is None
  assert throughput.utilisation(3e12, 0.0, 12e12) is None


class _FakeDevice:
  device_kind = "NVIDIA H200"


def test_meter_rates_over_an_interval():
  config = model_config()
  now = [100.0]
  meter = throughput.Meter(config, [_FakeDevice(), _FakeDevice()], clock=lambda: now[0])
  batch = contract_batch(2, 16, 5, 3)
  batch["attention_mask"][:, 10:] = 0  # 10 real pieces per row
  meter.add(batch)
  meter.add(batch)
  now[0] += 4.0
  rates = meter.read()
  assert rates["steps_per_s"] == pytest.approx(0.5) and rates["tokens_per_s"] == pytest.approx(10.0)
  step = throughput.batch_flops(config, batch)
  peak = throughput.peak_flops_per_s("NVIDIA H200", config.dtype)
  assert rates["model_flops_utilization"] == pytest.approx(2 * step / 4.0 / (2 * peak))
  # A restart (after an evaluation) drops what was added and the time spent so far.
  meter.add(batch)
  now[0] += 50.0
  meter.restart()
  meter.add(batch)
  now[0] += 1.0
  assert meter.read()["tokens_per_s"] == pytest.approx(20.0)
  cpu = throughput.Meter(config, jax.devices()[:1])
  cpu.add(batch)
  assert cpu.read()["model_flops_utilization"] is None
  assert set(rates) == set(throughput.RATE_KEYS)
