"""The syntactic and semantic graph convolutions of D2E2S (steps 3 and 4 of the reference).

Both layers compute `A @ X` for a weighted adjacency A over the sub-token positions of a
sentence. Two interchangeable implementations sit behind `implementation`:

* "dense": batched matmuls with the [B, T, T] adjacency (what the released code does);
* "jraph": message passing over a batched `jraph.GraphsTuple` whose nodes are the B * T
  positions and whose edges carry the adjacency weights (the syntactic graph: the batch's
  edge list; the semantic graph: the complete graph of each sentence's real positions).

They compute the same numbers (tests/test_gcn.py). Forward + backward on CPU with B=16,
T=64, d=768, E=400 edges per sentence: SynGCN 80 ms dense vs 82 ms jraph; SemGCN 103 ms
dense vs 697 ms jraph (its graph is complete, T^2 edges, so gather/scatter loses to a
matmul). Dense is therefore the default; the jraph form is there for sparse, long inputs
and for graph layers other than these two.

Deliberate differences from the released code:
* The released `GCN()` and `SemGCN(args)` ignore the command-line `num_layers` and
  `gcn_dropout` and always use 2 layers and dropout 0.1; here both come from the config
  (defaults 2 and 0.1 reproduce the released behaviour).
* The released SemGCN masks keys and zeroes query rows where the token id equals 0 (the
  pad id of BERT and DeBERTa); here the attention mask does that, which is the same for
  those tokenizers and right for any other pad id.
* Linear layers are initialised like `torch.nn.Linear` weights (U(+-1/sqrt(fan_in))) with
  zero biases (PyTorch draws the biases from the same uniform).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from d2e2s_jax import settings
from d2e2s_jax.data.jraph_compat import jraph
from d2e2s_jax.models.dropout import Dropout

Array = jax.Array

IMPLEMENTATIONS = settings.GRAPH_IMPLEMENTATIONS
_SEM_ATTENTION_DROPOUT = 0.1  # fixed in the released MultiHeadAttention


def torch_like_dense(features: int, dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
  """A `nn.Dense` initialised like `torch.nn.Linear`'s weight, float32 parameters."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                  bias_init=nn.initializers.zeros)


class SyntacticEdges(NamedTuple):
  """The batch's syntactic graph as padded edge lists (see WORKSPACE.md's batch contract).

  Attributes:
    senders: int32 [B, E] sub-token positions.
    receivers: int32 [B, E] sub-token positions.
    edge_mask: bool [B, E] real edges.
  """

  senders: Array
  receivers: Array
  edge_mask: Array

  def dense(self, num_nodes: int, dtype: Any = jnp.float32) -> Array:
    """The [B, T, T] adjacency, A[b, receiver, sender] = 1 for each real edge."""
    # Per sentence (vmap): a scatter with a batch dimension, which a batch-sharded mesh
    # partitions without gathering the edges to the full batch.
    def one(receivers, senders, weights):
      return jnp.zeros((num_nodes, num_nodes), dtype).at[receivers, senders].add(weights)

    return jax.vmap(one)(self.receivers, self.senders, self.edge_mask.astype(dtype))

  def graphs_tuple(self, num_nodes: int, dtype: Any = jnp.float32) -> jraph.GraphsTuple:
    """One `jraph.GraphsTuple` holding the B sentence graphs, edge weights 1 (0 on padding).

    Node features are left empty (None); `propagate` takes them separately so that one
    graph serves several feature sets.
    """
    return _batched_graph(self.senders, self.receivers, self.edge_mask.astype(dtype), num_nodes)


def _batched_graph(senders: Array, receivers: Array, weights: Array, num_nodes: int) -> jraph.GraphsTuple:
  """Flattens [B, E] per-sentence edges into one GraphsTuple of B graphs of `num_nodes`."""
  batch, edges = senders.shape
  offsets = (jnp.arange(batch) * num_nodes)[:, None]
  return jraph.GraphsTuple(
      nodes=None, edges=weights.reshape(-1),
      senders=(senders + offsets).reshape(-1), receivers=(receivers + offsets).reshape(-1),
      globals=None, n_node=jnp.full((batch,), num_nodes), n_edge=jnp.full((batch,), edges))


def complete_graph(weights: Array) -> jraph.GraphsTuple:
  """The complete graph of each sentence with edge weight weights[b, receiver, sender].

  It spans all T positions; for SemGCN's adjacency every edge touching a padded position
  has weight exactly 0 (padded rows are zeroed, padded keys get softmax weight 0), so it
  acts as the complete graph of the real positions while keeping a static edge count.
  """
  batch, num_nodes, _ = weights.shape
  receivers, senders = jnp.meshgrid(jnp.arange(num_nodes), jnp.arange(num_nodes), indexing="ij")
  tile = lambda x: jnp.broadcast_to(x.reshape(1, -1), (batch, num_nodes * num_nodes))
  return _batched_graph(tile(senders), tile(receivers), weights.reshape(batch, -1), num_nodes)


def propagate(graph: jraph.GraphsTuple, features: Array) -> Tuple[Array, Array]:
  """Weighted sum of the senders' features at each receiver, and each receiver's weight sum.

  Args:
    graph: B graphs of T nodes each, scalar edge weights in `graph.edges`.
    features: [B, T, d] node features.

  Returns:
    ([B, T, d] aggregated features, [B, T, 1] row sums of the adjacency).
  """
  batch, num_nodes, width = features.shape
  total = batch * num_nodes
  nodes = features.reshape(total, width)
  weights = graph.edges.astype(features.dtype)
  messages = nodes[graph.senders] * weights[:, None]
  aggregated = jax.ops.segment_sum(messages, graph.receivers, num_segments=total)
  row_sums = jax.ops.segment_sum(weights, graph.receivers, num_segments=total)
  return aggregated.reshape(batch, num_nodes, width), row_sums.reshape(batch, num_nodes, 1)


def _aggregate(implementation: str, adjacency: Array | None, graph: jraph.GraphsTuple | None,
               features: Array) -> Tuple[Array, Array]:
  """`A @ X` and rowsum(A) by the chosen implementation."""
  if implementation == "dense":
    adjacency = adjacency.astype(features.dtype)
    return jnp.einsum("bij,bjd->bid", adjacency, features), adjacency.sum(-1, keepdims=True)
  if implementation == "jraph":
    return propagate(graph, features)
  raise ValueError(f"unknown graph implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")


class SynGCN(nn.Module):
  """Syntactic GCN: per layer `X = relu((W_l(A X) + W_l(X)) / (rowsum(A) + 1))`.

  Computed as `W(A X + X) + 2 b` (one matmul instead of two; the same up to float32
  rounding).

  Attributes:
    features: d, width of the input and of every layer.
    num_layers: number of layers.
    dropout_rate: dropout between layers (not after the last).
    implementation: "dense" or "jraph".
    dtype: compute dtype.
  """

  features: int
  num_layers: int = 2
  dropout_rate: float = 0.1
  implementation: str = "dense"
  dtype: Any = jnp.float32

  def setup(self):
    self.layers = [torch_like_dense(self.features, self.dtype) for _ in range(self.num_layers)]
    self.dropout = Dropout(self.dropout_rate)

  def __call__(self, inputs: Array, edges: SyntacticEdges, deterministic: bool = True,
               adjacency: Array | None = None, dropout_rate: Array | None = None) -> Array:
    """Runs the layers over [B, T, d] inputs.

    Args:
      inputs: [B, T, d] node features.
      edges: the syntactic graph.
      deterministic: disables dropout when True.
      adjacency: optional precomputed `edges.dense(T)` (the dense path builds it otherwise).
      dropout_rate: a runtime rate overriding `self.dropout_rate` (see `dropout.Dropout`).

    Returns:
      [B, T, d] features.
    """
    num_nodes = inputs.shape[1]
    graph = None
    if self.implementation == "dense" and adjacency is None:
      adjacency = edges.dense(num_nodes)
    elif self.implementation == "jraph":
      graph = edges.graphs_tuple(num_nodes)
    x = inputs.astype(self.dtype)
    for index, layer in enumerate(self.layers):
      aggregated, row_sums = _aggregate(self.implementation, adjacency, graph, x)
      # W(A X) + b + W(X) + b as one matmul: W(A X + X) + 2 b.
      linear = layer(aggregated + x)
      x = jax.nn.relu((linear + layer.variables["params"]["bias"].astype(linear.dtype)) / (row_sums + 1))
      if index < self.num_layers - 1:
        x = self.dropout(x, deterministic=deterministic, rate=dropout_rate)
    return x


class SemGCN(nn.Module):
  """Semantic GCN over the head-averaged self-attention graph.

  `A_sem` = mean over heads of softmax(q k^T / sqrt(d / heads)) with padded keys masked,
  diagonal set to 1, rows of padded positions zeroed. Per layer
  `X = relu(W_l(A_sem X) / (rowsum(A_sem) + 1))` (no self-loop term).

  Attributes:
    features: d.
    num_heads: attention heads (d must be divisible by it).
    num_layers: GCN layers.
    dropout_rate: dropout between layers.
    implementation: "dense" or "jraph".
    dtype: compute dtype; the softmax runs in float32.
  """

  features: int
  num_heads: int = 1
  num_layers: int = 2
  dropout_rate: float = 0.1
  implementation: str = "dense"
  dtype: Any = jnp.float32

  def setup(self):
    if self.features % self.num_heads:
      raise ValueError(f"width {self.features} is not divisible by {self.num_heads} attention heads")
    self.query = torch_like_dense(self.features, self.dtype)
    self.key = torch_like_dense(self.features, self.dtype)
    self.attention_dropout = Dropout(_SEM_ATTENTION_DROPOUT)
    self.layers = [torch_like_dense(self.features, self.dtype) for _ in range(self.num_layers)]
    self.dropout = Dropout(self.dropout_rate)

  def attention_adjacency(self, inputs: Array, mask: Array, deterministic: bool = True) -> Array:
    """The float32 [B, T, T] semantic adjacency `A_sem` of [B, T, d] inputs."""
    batch, length, _ = inputs.shape
    head_dim = self.features // self.num_heads
    split = lambda x: x.reshape(batch, length, self.num_heads, head_dim)
    queries, keys = split(self.query(inputs)), split(self.key(inputs))
    scores = jnp.einsum("bqhd,bkhd->bhqk", queries, keys).astype(jnp.float32) / jnp.sqrt(head_dim)
    mask = mask.astype(bool)
    scores = jnp.where(mask[:, None, None, :], scores, -1e9)
    weights = self.attention_dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
    adjacency = weights.mean(axis=1)
    eye = jnp.eye(length, dtype=bool)
    adjacency = jnp.where(eye, 1.0, adjacency)
    return jnp.where(mask[:, :, None], adjacency, 0.0)

  def __call__(self, inputs: Array, mask: Array, deterministic: bool = True,
               dropout_rate: Array | None = None) -> Tuple[Array, Array]:
    """Returns ([B, T, d] features, float32 [B, T, T] adjacency A_sem).

    `dropout_rate` is a runtime rate overriding `self.dropout_rate` between the layers.
    """
    adjacency = self.attention_adjacency(inputs, mask, deterministic)
    graph = None
    if self.implementation == "jraph":
      graph = complete_graph(adjacency)
    x = inputs.astype(self.dtype)
    for index, layer in enumerate(self.layers):
      aggregated, row_sums = _aggregate(self.implementation, adjacency, graph, x)
      x = jax.nn.relu(layer(aggregated) / (row_sums + 1))
      if index < self.num_layers - 1:
        x = self.dropout(x, deterministic=deterministic, rate=dropout_rate)
    return x, adjacency
