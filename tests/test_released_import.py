"""Import of released D2E2S state dicts, checked against the torch transcription of the
released forward pass (`d2e2s_jax.testing.torch_reference`) on batches without padding."""

import functools

import jax
import numpy as np
import pytest
import torch

from d2e2s_jax.models import d2e2s, released_import
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config
from d2e2s_jax.testing.torch_reference import ReleasedHead

WIDTH, HEADS, SIZE_EMBEDDING, LENGTH = 16, 2, 5, 10
CONFIG = d2e2s.D2E2SConfig(hidden_size=WIDTH, hidden_dim=WIDTH // 2, attention_heads=HEADS,
                           size_embedding=SIZE_EMBEDDING)
ENCODER = DebertaV2Config(vocab_size=40, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=24, max_position_embeddings=32, relative_attention=True,
                          position_buckets=8, max_relative_positions=-1, share_att_key=True,
                          pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", conv_kernel_size=3,
                          position_biased_input=False, pad_token_id=0)


def _released_head(seed=0):
  torch.manual_seed(seed)
  module = ReleasedHead(WIDTH, WIDTH // 2, HEADS, SIZE_EMBEDDING).eval()
  with torch.no_grad():  # random everything, LayerNorms included, so a swapped mapping shows
    for name, param in module.named_parameters():
      param.uniform_(-0.5, 0.5) if "size_embeddings" not in name else param.normal_()
  return module


def _unpadded_batch(seed):
  """Two full-length sentences; pairs cover before/after, adjacent, nested and far apart."""
  rng = np.random.default_rng(seed)
  token_ids = rng.integers(1, ENCODER.vocab_size, (2, LENGTH))
  adjacency = (rng.random((2, LENGTH, LENGTH)) < 0.25).astype(np.float32)
  adjacency = np.maximum(np.maximum(adjacency, adjacency.transpose(0, 2, 1)), np.eye(LENGTH)).astype(np.float32)
  span_tokens = [[(1, 2), (2, 4), (5, 6), (3, 8), (8, 9), (4, 5)], [(1, 3), (3, 4), (6, 9), (7, 8), (1, 2), (9, 10)]]
  span_sizes = rng.integers(1, 4, (2, 6))
  pairs = [[(0, 1), (1, 0), (0, 2), (2, 0), (3, 5), (5, 3), (0, 4), (4, 1)],
           [(0, 1), (2, 3), (3, 2), (4, 0), (0, 5), (5, 4), (1, 2), (2, 1)]]
  edges = [np.stack(np.nonzero(a), -1) for a in adjacency]  # (receiver, sender)
  num_edges = max(len(e) for e in edges)
  batch = {
      "input_ids": token_ids.astype(np.int32),
      "attention_mask": np.ones((2, LENGTH), np.int32),
      "span_token_bounds": np.array(span_tokens, np.int32),
      "span_sizes": span_sizes.astype(np.int32),
      "span_mask": np.ones((2, 6), bool),
      "pair_indices": np.array(pairs, np.int32),
      "pair_mask": np.ones((2, 8), bool),
      "graph_senders": np.zeros((2, num_edges), np.int32),
      "graph_receivers": np.zeros((2, num_edges), np.int32),
      "graph_edge_mask": np.zeros((2, num_edges), bool),
      "example_mask": np.ones((2,), bool),
  }
  for row, row_edges in enumerate(edges):
    batch["graph_receivers"][row, :len(row_edges)] = row_edges[:, 0]
    batch["graph_senders"][row, :len(row_edges)] = row_edges[:, 1]
    batch["graph_edge_mask"][row, :len(row_edges)] = True
  return batch, dict(mask=torch.tensor(token_ids != 0), adjacency=torch.tensor(adjacency),
                     span_tokens=torch.tensor(span_tokens), span_sizes=torch.tensor(span_sizes),
                     pairs=torch.tensor(pairs)), torch.tensor(token_ids)


def _assert_outputs_match(ours, reference):
  span_logits, pair_logits, kl = reference
  np.testing.assert_allclose(ours["span_logits"], span_logits.detach().numpy(), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ours["pair_logits"], pair_logits.detach().numpy(), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ours["kl_term"], kl, rtol=1e-5)


@functools.lru_cache(maxsize=None)
def _jitted_apply(module):
  return jax.jit(module.apply)


def test_head_forward_matches_released_forward():
  released = _released_head()
  batch, torch_inputs, _ = _unpadded_batch(0)
  hidden = np.random.default_rng(1).standard_normal((2, LENGTH, WIDTH)).astype(np.float32)
  params, ignored = released_import.import_released_state_dict(released.state_dict(), CONFIG, return_ignored=True)
  ours = _jitted_apply(d2e2s.D2E2SHead(CONFIG))({"params": params}, hidden, batch)
  with torch.no_grad():
    reference = released(torch.tensor(hidden), **torch_inputs)
  _assert_outputs_match(ours, reference)

  expected_ignored = sorted(k for k in released.state_dict()
                            if k.startswith(("fc.", "attention_layer.", "TIN.residual_layer1.",
                                             "TIN.residual_layer3.", "TIN.GatedGCN.")))
  assert ignored == expected_ignored and len(ignored) == 2 + 7 + 6 + 6 + 7


@pytest.mark.parametrize("prefix", ["deberta.", "bert."])
def test_full_model_forward_matches_released_forward(prefix):
  from transformers import DebertaV2Model
  torch.manual_seed(3)
  encoder = DebertaV2Model(ENCODER.to_transformers()).eval()
  released = _released_head(seed=4)
  state = {prefix + k: v for k, v in encoder.state_dict().items()}
  state.update(released.state_dict())
  config = d2e2s.D2E2SConfig(**{**CONFIG.__dict__, "encoder": ENCODER})
  params = released_import.import_released_state_dict(state, config)
  assert set(params) == {"encoder", "head"}

  batch, torch_inputs, token_ids = _unpadded_batch(5)
  ours = _jitted_apply(d2e2s.D2E2S(config))({"params": params}, batch)
  with torch.no_grad():
    hidden = encoder(input_ids=token_ids, attention_mask=torch.ones(2, LENGTH)).last_hidden_state
    reference = released(hidden, **torch_inputs)
  _assert_outputs_match(ours, reference)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"lstm.extra_l0": torch.zeros(1)}), "mapped to no parameter: 'lstm.extra_l0'"),
    (lambda s: s.pop("Sem_gcn.attn.linears.1.weight"), "no key 'Sem_gcn.attn.linears.1.weight'"),
    (lambda s: s.pop("TIN.lstm.bias_hh_l1_reverse"), "TIN.lstm.bias_hh_l1_reverse"),
    (lambda s: s.update({"size_embeddings.weight": torch.zeros(100, 7)}), "size_embeddings/embedding"),
    (lambda s: s.update({"deberta.embeddings.word_embeddings.weight": torch.zeros(40, WIDTH)}), "config.encoder"),
])
def test_import_fails_loudly(edit, message):
  state = dict(_released_head().state_dict())
  edit(state)
  with pytest.raises(released_import.ReleasedImportError, match=message):
    released_import.import_released_state_dict(state, CONFIG)
