"""A PyTorch transcription of the released D2E2S head, its loss and its AdamW.

The numerical and speed reference for our Flax model: `tests/test_released_import.py`
checks our forward pass against `ReleasedHead` (and our importer against its state-dict
names), `benchmarks/torch_step.py` times `TorchD2E2S` (`transformers.DebertaV2Model` +
`ReleasedHead`) with `ReleasedAdamW` against our jitted training step. Nothing in the
library imports this module (it needs torch, a test dependency).

Written from /work/shared/docs/d2e2s-reference.md, batched the way the released code is:

* the BiLSTMs run unpacked over the padded batch (the released behaviour; ours honour
  lengths, see `d2e2s_jax/models/lstm.py`);
* span and pair features are max-pools over [B, S, T, d] / [B, P, T, d] masked copies of
  the sequence (ours read a table of range maxima); padded spans pool -1e30 as released;
* SemGCN masks keys and query rows by `mask` (the released code by token id 0), and
  SemGCN(h) is computed in full for its attention graph, GCN layers included; the two
  residual blocks and SynGCN(h) that the released TIN computes and discards are left
  out (fewer FLOPs than the released step, none of which reach the outputs);
* the KL term is a Python float (no gradient), as released.

Dropout sits where our model has it (BiLSTM between layers and on its output, between
GCN layers, 0.1 on SemGCN's attention, `prop_drop` on the classifier inputs); in eval
mode the forward pass is the released eval forward.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_SEM_ATTENTION_DROPOUT = 0.1  # fixed in the released MultiHeadAttention


def _block(width_in: int, width: int) -> nn.Sequential:
  return nn.Sequential(nn.Linear(width_in, width), nn.ReLU(), nn.Linear(width, width), nn.LayerNorm(width))


class _Holder(nn.Module):
  """A bag of submodules, named like the released attributes."""

  def __init__(self, **modules):
    super().__init__()
    for name, module in modules.items():
      setattr(self, name, module)


class ReleasedHead(nn.Module):
  """The released module layout (state-dict names and shapes) and its forward pass.

  Args:
    width: d, the encoder width.
    hidden_dim: units per direction of the BiLSTM channel (d / 2).
    heads: SemGCN attention heads.
    size_embedding: width of the span size embedding.
    lstm_dropout, gcn_dropout, prop_drop: the dropout rates (training mode only).
  """

  def __init__(self, width: int, hidden_dim: int, heads: int, size_embedding: int, lstm_dropout: float = 0.5,
               gcn_dropout: float = 0.1, prop_drop: float = 0.1):
    super().__init__()
    self.heads, self.lstm_dropout, self.gcn_dropout, self.prop_drop = heads, lstm_dropout, gcn_dropout, prop_drop
    self.lstm = nn.LSTM(width, hidden_dim, 2, batch_first=True, bidirectional=True, dropout=lstm_dropout)
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

  def _dropout(self, x: torch.Tensor, rate: float) -> torch.Tensor:
    return F.dropout(x, rate, self.training) if rate else x

  def sem_gcn(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    batch, length, width = x.shape
    split = lambda y: y.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
    query, key = (split(linear(x)) for linear in self.Sem_gcn.attn.linears)
    scores = query @ key.transpose(-2, -1) / math.sqrt(width // self.heads)
    scores = scores.masked_fill(~mask[:, None, None, :], -1e9)
    adjacency = self._dropout(F.softmax(scores, dim=-1), _SEM_ATTENTION_DROPOUT).mean(1)
    adjacency = adjacency - torch.diag_embed(torch.diagonal(adjacency, dim1=1, dim2=2)) + torch.eye(length)
    adjacency = adjacency * mask.float()[..., None]
    denom = adjacency.sum(2, keepdim=True) + 1
    for layer, linear in enumerate(self.Sem_gcn.W):
      x = F.relu(linear(adjacency.bmm(x)) / denom)
      if layer < len(self.Sem_gcn.W) - 1:
        x = self._dropout(x, self.gcn_dropout)
    return x, adjacency

  def syn_gcn(self, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    denom = adjacency.sum(2, keepdim=True) + 1
    for layer, linear in enumerate(self.Syn_gcn.W):
      x = F.relu((linear(adjacency.bmm(x)) + linear(x)) / denom)
      if layer < len(self.Syn_gcn.W) - 1:
        x = self._dropout(x, self.gcn_dropout)
    return x

  def forward(self, h: torch.Tensor, mask: torch.Tensor, adjacency: torch.Tensor, span_tokens: torch.Tensor,
              span_sizes: torch.Tensor, pairs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """The released forward pass over a padded batch.

    Args:
      h: [B, T, d] encoder states.
      mask: bool [B, T] real tokens.
      adjacency: [B, T, T] syntactic graph.
      span_tokens: int64 [B, S, 2] span bounds [start, end) in tokens.
      span_sizes: int64 [B, S].
      pairs: int64 [B, P, 2] (head, tail) indices into S.

    Returns:
      ([B, S, 3] span logits, [B, P, 4] pair logits, the KL term as a float).
    """
    channel = self._dropout(self.lstm(h)[0], self.lstm_dropout)
    syntactic = self.syn_gcn(adjacency, channel)
    semantic, _ = self.sem_gcn(channel, mask)
    _, hidden_adjacency = self.sem_gcn(h, mask)
    concat = torch.cat([self.TIN.residual_layer2(h + syntactic), self.TIN.residual_layer4(h + semantic)], dim=2)
    fused = self.TIN.feature_fusion(self.TIN.lstm(concat)[0])
    features = F.softmax(fused @ fused.transpose(1, 2), dim=2) @ fused + fused  # unmasked, as released

    positions = torch.arange(h.shape[1])
    span_masks = (positions >= span_tokens[..., :1]) & (positions < span_tokens[..., 1:])  # [B, S, T]
    pool = (((~span_masks).float() * -1e30)[..., None] + features[:, None]).max(dim=2)[0]
    sizes = self.size_embeddings(span_sizes)
    context = features[:, :1].expand(-1, pool.shape[1], -1)
    span_logits = self.entity_classifier(self._dropout(torch.cat([context, pool, sizes], dim=2), self.prop_drop))

    take = lambda values, index: torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))
    head, tail = take(span_tokens, pairs[..., 0]), take(span_tokens, pairs[..., 1])
    head_first = head[..., 1] < tail[..., 0]
    start = torch.where(head_first, head[..., 1], tail[..., 1])
    end = torch.where(head_first, tail[..., 0], head[..., 0])
    between_mask = (positions >= start[..., None]) & (positions < end[..., None])  # [B, P, T]
    between = (((~between_mask).float() * -1e30)[..., None] + features[:, None]).max(dim=2)[0]
    between = between * between_mask.any(-1, keepdim=True)
    pair_inputs = torch.cat([between, take(pool, pairs[..., 0]), take(pool, pairs[..., 1]),
                             take(sizes, pairs[..., 0]), take(sizes, pairs[..., 1])], dim=2)
    pair_logits = self.senti_classifier(self._dropout(pair_inputs, self.prop_drop))

    with torch.no_grad():
      p, k = hidden_adjacency, adjacency
      p_loss = F.kl_div(F.log_softmax(p, dim=-1), F.softmax(k, dim=-1), reduction="none").sum()
      k_loss = F.kl_div(F.log_softmax(k, dim=-1), F.softmax(p, dim=-1), reduction="none").sum()
      kl = math.log(1 + 5 / max(abs(float((p_loss + k_loss) / 2)), 1e-12))
    return span_logits, pair_logits, kl


class TorchD2E2S(nn.Module):
  """`transformers.DebertaV2Model` followed by `ReleasedHead`, on our batch dicts.

  Args:
    encoder_config: our `DebertaV2Config` (`to_transformers()` builds the encoder).
    head_config: our `D2E2SConfig` (widths, heads and dropout rates of the head).
  """

  def __init__(self, encoder_config: Any, head_config: Any):
    super().__init__()
    from transformers import DebertaV2Model  # pylint: disable=import-outside-toplevel
    self.encoder = DebertaV2Model(encoder_config.to_transformers())
    self.head = ReleasedHead(head_config.hidden_size, head_config.hidden_dim, head_config.attention_heads,
                             head_config.size_embedding, head_config.drop_out_rate, head_config.gcn_dropout,
                             head_config.prop_drop)

  def forward(self, batch: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, float]:
    hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return self.head(hidden, batch["attention_mask"].bool(), batch["adjacency"], batch["span_token_bounds"],
                     batch["span_sizes"], batch["pair_indices"])


def torch_batch(batch: Mapping[str, np.ndarray], trim: bool = True) -> Dict[str, torch.Tensor]:
  """Our numpy training batch as the torch model's tensors (dense syntactic adjacency).

  Args:
    batch: a batch of `batching.train_batches`.
    trim: pad T, S and P to the batch's longest sentence and largest counts, as the
      released code does, rather than to our buckets.
  """
  length = int(batch["attention_mask"].sum(1).max()) if trim else batch["input_ids"].shape[1]
  spans = max(int(batch["span_mask"].sum(1).max()), 1) if trim else batch["span_mask"].shape[1]
  pairs = max(int(batch["pair_mask"].sum(1).max()), 1) if trim else batch["pair_mask"].shape[1]
  out = {key: torch.from_numpy(np.ascontiguousarray(batch[key][:, :length])).long()
         for key in ("input_ids", "attention_mask")}
  for key, count in (("span_token_bounds", spans), ("span_sizes", spans), ("span_labels", spans),
                     ("span_mask", spans), ("pair_indices", pairs), ("pair_labels", pairs), ("pair_mask", pairs)):
    out[key] = torch.from_numpy(np.ascontiguousarray(batch[key][:, :count]))
  for key in ("span_token_bounds", "span_sizes", "span_labels", "pair_indices"):
    out[key] = out[key].long()
  adjacency = np.zeros((batch["input_ids"].shape[0], length, length), np.float32)
  rows, edges = np.nonzero(batch["graph_edge_mask"])
  adjacency[rows, batch["graph_receivers"][rows, edges], batch["graph_senders"][rows, edges]] = 1.0
  out["adjacency"] = torch.from_numpy(adjacency)
  out["example_mask"] = torch.from_numpy(batch["example_mask"])
  return out


def released_loss(outputs: Tuple[torch.Tensor, torch.Tensor, float], batch: Mapping[str, torch.Tensor],
                  kl_weight: float) -> torch.Tensor:
  """Mean entity CE over real spans + mean sentiment BCE over real pairs + kl_weight * KL."""
  span_logits, pair_logits, kl = outputs
  rows = batch["example_mask"][:, None]
  span_mask, pair_mask = batch["span_mask"] & rows, batch["pair_mask"] & rows
  entity = F.cross_entropy(span_logits[span_mask], batch["span_labels"][span_mask])
  if not pair_mask.any():
    return entity
  sentiment = F.binary_cross_entropy_with_logits(pair_logits[pair_mask], batch["pair_labels"][pair_mask].float())
  return entity + sentiment + kl_weight * kl


class ReleasedAdamW(torch.optim.Optimizer):
  """transformers' old `AdamW(correct_bias=False)`: decoupled weight decay, no bias correction.

  Updates each parameter group with torch's multi-tensor (`_foreach_*`) kernels.
  """

  def __init__(self, params: Iterable[Any], lr: float, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
               weight_decay: float = 0.0):
    super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self, closure=None):  # pylint: disable=arguments-differ
    del closure
    for group in self.param_groups:
      params = [p for p in group["params"] if p.grad is not None]
      if not params:
        continue
      grads = [p.grad for p in params]
      for p in params:
        if not self.state[p]:
          self.state[p]["exp_avg"] = torch.zeros_like(p)
          self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
      exp_avg = [self.state[p]["exp_avg"] for p in params]
      exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
      beta1, beta2 = group["betas"]
      torch._foreach_mul_(exp_avg, beta1)  # pylint: disable=protected-access
      torch._foreach_add_(exp_avg, grads, alpha=1 - beta1)  # pylint: disable=protected-access
      torch._foreach_mul_(exp_avg_sq, beta2)  # pylint: disable=protected-access
      torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)  # pylint: disable=protected-access
      denom = torch._foreach_add(torch._foreach_sqrt(exp_avg_sq), group["eps"])  # pylint: disable=protected-access
      torch._foreach_addcdiv_(params, exp_avg, denom, value=-group["lr"])  # pylint: disable=protected-access
      if group["weight_decay"]:
        torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])  # pylint: disable=protected-access


def released_optimizer(model: nn.Module, lr: float, weight_decay: float) -> ReleasedAdamW:
  """The released parameter groups: no decay on names containing `bias` or `LayerNorm.weight`."""
  no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
  named: List[Tuple[str, nn.Parameter]] = list(model.named_parameters())
  groups = [{"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
  return ReleasedAdamW(groups, lr=lr, weight_decay=weight_decay)


def make_train_step(model: TorchD2E2S, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float,
                    kl_weight: float):
  """The released training step: forward, loss, backward, clipping, AdamW, schedule.

  Returns:
    step(batch) -> the loss as a float, `batch` from `torch_batch`.
  """

  def step(batch: Mapping[str, torch.Tensor]) -> float:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = released_loss(model(batch), batch, kl_weight)
    loss.backward()
    if max_grad_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
      scheduler.step()
    return loss.item()

  return step
