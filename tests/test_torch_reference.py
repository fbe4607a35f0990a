"""The torch transcription's training pieces (its forward pass is checked against ours in
tests/test_released_import.py): batches, loss, the released AdamW and a training step."""

import numpy as np
import torch

from d2e2s_jax.data import batching, encoding
from d2e2s_jax.models import d2e2s
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config
from d2e2s_jax.testing import torch_reference
from tests.test_data_batching import PAD_ID, TOKENIZER, _dataset


def test_released_adamw_is_adam_without_bias_correction_and_decoupled_decay():
  param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
  optimizer = torch_reference.ReleasedAdamW([param], lr=0.1, eps=1e-6, weight_decay=0.01)
  expected, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
  for grad in (np.array([0.5, -1.0]), np.array([0.2, 0.3])):
    param.grad = torch.tensor(grad, dtype=torch.float32)
    optimizer.step()
    m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2
    expected = expected - 0.1 * m / (np.sqrt(v) + 1e-6)
    expected = expected - 0.1 * 0.01 * expected
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5)


def test_training_step_on_our_batches_lowers_the_loss():
  encoded = encoding.encode_examples(_dataset(8), TOKENIZER, max_length=64)
  config = batching.BatchConfig(batch_size=4, max_span_size=3, pad_token_id=PAD_ID)
  batch = next(batching.train_batches(encoded, config, epoch=0, seed=0))
  converted = torch_reference.torch_batch(batch)
  length = int(batch["attention_mask"].sum(1).max())
  assert converted["input_ids"].shape == (4, length) and converted["adjacency"].shape == (4, length, length)
  rows, edges = np.nonzero(batch["graph_edge_mask"])
  assert converted["adjacency"].sum() == len(rows) == len(edges)
  encoder = DebertaV2Config(vocab_size=len(TOKENIZER), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=24, max_position_embeddings=64, relative_attention=True,
                            position_buckets=8, max_relative_positions=-1, pos_att_type="p2c|c2p",
                            pad_token_id=PAD_ID)
  head = d2e2s.D2E2SConfig(hidden_size=16, attention_heads=2, drop_out_rate=0.0, gcn_dropout=0.0, prop_drop=0.0)
  torch.manual_seed(0)
  model = torch_reference.TorchD2E2S(encoder, head)
  optimizer = torch_reference.released_optimizer(model, lr=1e-3, weight_decay=0.01)
  # Biases and LayerNorm weights are not decayed (all vectors).
  assert optimizer.param_groups[1]["params"] and all(p.ndim == 1 for p in optimizer.param_groups[1]["params"])
  step = torch_reference.make_train_step(model, optimizer, None, max_grad_norm=1.0, kl_weight=0.0)
  losses = [step(converted) for _ in range(5)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
