"""Import of released D2E2S state dicts, checked against a torch re-implementation of the
released forward pass (written here from the reference page) on batches without padding."""

import functools
import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2e2s_jax.models import d2e2s, released_import
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config

WIDTH, HEADS, SIZE_EMBEDDING, LENGTH = 16, 2, 5, 10
CONFIG = d2e2s.D2E2SConfig(hidden_size=WIDTH, hidden_dim=WIDTH // 2, attention_heads=HEADS,
                           size_embedding=SIZE_EMBEDDING)
ENCODER = DebertaV2Config(vocab_size=40, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=24, max_position_embeddings=32, relative_attention=True,
                          position_buckets=8, max_relative_positions=-1, share_att_key=True,
                          pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", conv_kernel_size=3,
                          position_biased_input=False, pad_token_id=0)


def _block(width_in, width):
  return nn.Sequential(nn.Linear(width_in, width), nn.ReLU(), nn.Linear(width, width), nn.LayerNorm(width))


class _Holder(nn.Module):
  """A bag of submodules, named like the released attributes."""

  def __init__(self, **modules):
    super().__init__()
    for name, module in modules.items():
      setattr(self, name, module)


class ReleasedHead(nn.Module):
  """The released module layout (state-dict names and shapes) and its forward pass."""

  def __init__(self, width=WIDTH, hidden_dim=WIDTH // 2, heads=HEADS, size_embedding=SIZE_EMBEDDING):
    super().__init__()
    self.heads = heads
    self.lstm = nn.LSTM(width, hidden_dim, 2, batch_first=True, bidirectional=True, dropout=0.5)
    self.attention_layer = _Holder(linear_q=nn.Linear(width, width), w_query=nn.Linear(width, hidden_dim),
                                   w_value=nn.Linear(width, hidden_dim), v=nn.Linear(hidden_dim, 1, bias=False))
    self.fc = nn.Linear(2 * hidden_dim, width)
    self.Syn_gcn = _Holder(W=nn.ModuleList([nn.Linear(width, width) for _ in range(2)]))
    self.Sem_gcn = _Holder(W=nn.ModuleList([nn.Linear(width, width) for _ in range(2)]),
                           attn=_Holder(linears=nn.ModuleList([nn.Linear(width, width) for _ in range(2)])))
    # GatedGCN stands in for the PyTorch Geometric layers: only its names matter.
    gated = _Holder(conv1=_Holder(lin=nn.Linear(width, width, bias=False)), conv3=_Holder(rnn=nn.GRUCell(width, width)))
    gated.conv1.bias = nn.Parameter(torch.zeros(width))
    gated.conv3.weight = nn.Parameter(torch.zeros(2, width, width))
    self.TIN = _Holder(residual_layer1=_block(width, width), residual_layer2=_block(width, width),
                       residual_layer3=_block(width, width), residual_layer4=_block(width, width),
                       GatedGCN=gated, lstm=nn.LSTM(2 * width, width, 2, batch_first=True, bidirectional=True),
                       feature_fusion=_block(2 * width, width))
    self.senti_classifier = nn.Linear(3 * width + 2 * size_embedding, 4)
    self.entity_classifier = nn.Linear(2 * width + size_embedding, 3)
    self.size_embeddings = nn.Embedding(100, size_embedding)

  def sem_gcn(self, x, token_ids):
    batch, length, width = x.shape
    split = lambda y: y.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
    query, key = (split(linear(x)) for linear in self.Sem_gcn.attn.linears)
    scores = query @ key.transpose(-2, -1) / math.sqrt(width // self.heads)
    scores = scores.masked_fill((token_ids == 0)[:, None, None, :], -1e9)
    adjacency = F.softmax(scores, dim=-1).mean(1)
    adjacency = adjacency - torch.diag_embed(torch.diagonal(adjacency, dim1=1, dim2=2)) + torch.eye(length)
    adjacency = adjacency * (token_ids != 0).float()[..., None]
    denom = adjacency.sum(2, keepdim=True) + 1
    for linear in self.Sem_gcn.W:
      x = F.relu(linear(adjacency.bmm(x)) / denom)
    return x, adjacency

  def syn_gcn(self, adjacency, x):
    denom = adjacency.sum(2, keepdim=True) + 1
    for linear in self.Syn_gcn.W:
      x = F.relu((linear(adjacency.bmm(x)) + linear(x)) / denom)
    return x

  def forward(self, h, token_ids, adjacency, span_tokens, span_sizes, pairs):
    """Eval-mode released forward for one unpadded batch; spans/pairs as python lists."""
    channel, _ = self.lstm(h)
    syntactic = self.syn_gcn(adjacency, channel)
    semantic, _ = self.sem_gcn(channel, token_ids)
    _, hidden_adjacency = self.sem_gcn(h, token_ids)
    concat = torch.cat([self.TIN.residual_layer2(h + syntactic), self.TIN.residual_layer4(h + semantic)], dim=2)
    fused = self.TIN.feature_fusion(self.TIN.lstm(concat)[0])
    weights = F.softmax(fused @ fused.transpose(1, 2), dim=2)
    features = weights @ fused + fused

    length = h.shape[1]
    span_masks = torch.stack([torch.stack([torch.arange(length).ge(s) & torch.arange(length).lt(e)
                                           for s, e in row]) for row in span_tokens]).float()
    pool = ((span_masks == 0).float() * -1e30)[..., None] + features[:, None]
    pool = pool.max(dim=2)[0]
    sizes = self.size_embeddings(span_sizes)
    context = features[:, 0][:, None].expand(-1, pool.shape[1], -1)
    span_logits = self.entity_classifier(torch.cat([context, pool, sizes], dim=2))

    pair_logits = []
    for row, row_pairs in enumerate(pairs):
      reprs = []
      for a, b in row_pairs:
        s1, s2 = span_tokens[row][a], span_tokens[row][b]
        start = s1[1] if s1[1] < s2[0] else s2[1]
        end = s2[0] if s1[1] < s2[0] else s1[0]
        mask = torch.zeros(length)
        mask[start:end] = 1
        between = ((mask == 0).float() * -1e30)[:, None] + features[row]
        between = between.max(dim=0)[0] if mask.any() else torch.zeros(features.shape[-1])
        reprs.append(torch.cat([between, pool[row, a], pool[row, b], sizes[row, a], sizes[row, b]]))
      pair_logits.append(self.senti_classifier(torch.stack(reprs)))

    p, k = hidden_adjacency, adjacency
    p_loss = F.kl_div(F.log_softmax(p, dim=-1), F.softmax(k, dim=-1), reduction="none").sum()
    k_loss = F.kl_div(F.log_softmax(k, dim=-1), F.softmax(p, dim=-1), reduction="none").sum()
    kl = math.log(1 + 5 / abs(float((p_loss + k_loss) / 2)))
    return span_logits, torch.stack(pair_logits), kl


def _released_head(seed=0):
  torch.manual_seed(seed)
  module = ReleasedHead().eval()
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
  return batch, dict(token_ids=torch.tensor(token_ids), adjacency=torch.tensor(adjacency),
                     span_tokens=span_tokens, span_sizes=torch.tensor(span_sizes), pairs=pairs)


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
  batch, torch_inputs = _unpadded_batch(0)
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

  batch, torch_inputs = _unpadded_batch(5)
  ours = _jitted_apply(d2e2s.D2E2S(config))({"params": params}, batch)
  with torch.no_grad():
    hidden = encoder(input_ids=torch_inputs["token_ids"], attention_mask=torch.ones(2, LENGTH)).last_hidden_state
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
