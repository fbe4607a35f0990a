"""Parity of the Flax DeBERTa-v2 encoder with `transformers.DebertaV2Model` (PyTorch, CPU).

Every variant runs a padded batch of uneven lengths, long enough that log-bucketing and
relative-range clamping are active, and compares every hidden state on real tokens.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from d2e2s_jax.models import deberta_v2  # pylint: disable=wrong-import-position
from d2e2s_jax.models import deberta_v2_convert  # pylint: disable=wrong-import-position
from d2e2s_jax.models.deberta_v2 import DebertaV2Config, DebertaV2Model  # pylint: disable=wrong-import-position

PARITY_ATOL = 1e-5
LENGTH = 21

BASE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            layer_norm_eps=1e-7, pad_token_id=0)
# Named after what they exercise; "xxlarge" is microsoft/deberta-v2-xxlarge's structure.
VARIANTS = {
    "xxlarge": dict(relative_attention=True, position_buckets=8, max_relative_positions=-1, share_att_key=True,
                    pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", conv_kernel_size=3, conv_act="gelu",
                    position_biased_input=False),
    "v3": dict(relative_attention=True, position_buckets=8, max_relative_positions=-1, share_att_key=True,
               pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", position_biased_input=False),
    "separate_pos_proj": dict(relative_attention=True, position_buckets=8, share_att_key=False, pos_att_type="c2p|p2c",
                              position_biased_input=False),
    "c2p_only": dict(relative_attention=True, position_buckets=8, share_att_key=True, pos_att_type="c2p",
                     norm_rel_ebd="layer_norm", position_biased_input=False),
    "p2c_only": dict(relative_attention=True, position_buckets=8, share_att_key=False, pos_att_type="p2c",
                     position_biased_input=False),
    # pos_att_type still counts in the score scale when relative attention is off.
    "absolute_positions": dict(relative_attention=False, position_biased_input=True, type_vocab_size=2,
                               pos_att_type="p2c|c2p"),
    "max_relative_no_buckets": dict(relative_attention=True, max_relative_positions=6, share_att_key=True,
                                    pos_att_type="p2c|c2p", position_biased_input=True),
    "embed_proj_grouped_conv": dict(relative_attention=True, position_buckets=8, share_att_key=True,
                                    pos_att_type="p2c|c2p", embedding_size=16, type_vocab_size=2, conv_kernel_size=5,
                                    conv_groups=2, conv_act="tanh", hidden_act="gelu_new",
                                    position_biased_input=True),
    "one_layer": dict(relative_attention=True, position_buckets=8, share_att_key=True, pos_att_type="p2c|c2p",
                      conv_kernel_size=3, num_hidden_layers=1, position_biased_input=False),
}


def make_config(variant: str) -> DebertaV2Config:
  return DebertaV2Config(**{**BASE, **VARIANTS[variant]})


def torch_model(config: DebertaV2Config, seed: int = 0):
  """A `transformers` model with every parameter random (LayerNorms included)."""
  torch.manual_seed(seed)
  hf_config = config.to_transformers()
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.DebertaV2Model(hf_config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "LayerNorm.weight" in name:
        param.uniform_(0.5, 1.5)
      else:
        param.normal_(0.0, 0.2)
  return model


def padded_batch(config: DebertaV2Config, lengths=(LENGTH, 13, 4), seed: int = 0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, config.vocab_size, (len(lengths), max(lengths)))
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    mask[row, :n] = 1
  ids = np.where(mask == 1, ids, config.pad_token_id)
  token_types = rng.randint(0, max(config.type_vocab_size, 1), ids.shape) * mask
  return ids, mask, token_types


def torch_hidden_states(model, ids, mask, token_types):
  kwargs = {"token_type_ids": torch.tensor(token_types)} if model.config.type_vocab_size else {}
  with torch.no_grad():
    out = model(torch.tensor(ids), torch.tensor(mask), output_hidden_states=True, **kwargs)
  return [h.numpy() for h in out.hidden_states]


def masked_max_diff(ours, theirs, mask) -> float:
  return float(np.max(np.abs(np.asarray(ours, np.float32) - theirs) * mask[..., None]))


@pytest.mark.parametrize("layer_loop", ["scan", "unroll"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hidden_states_match_transformers(variant, layer_loop):
  config = make_config(variant)
  reference = torch_model(config)
  params = deberta_v2_convert.hf_to_flax(reference.state_dict(), config)
  ids, mask, token_types = padded_batch(config)
  expected = torch_hidden_states(reference, ids, mask, token_types)
  model = DebertaV2Model(config, layer_loop=layer_loop)
  types = jnp.asarray(token_types) if config.type_vocab_size else None
  last, hidden_states = jax.jit(lambda p: model.apply({"params": p}, ids, mask, types, output_hidden_states=True))(
      params)
  assert len(hidden_states) == config.num_hidden_layers + 1 == len(expected)
  for index, (ours, theirs) in enumerate(zip(hidden_states, expected)):
    assert masked_max_diff(ours, theirs, mask) <= PARITY_ATOL, f"hidden state {index}"
  assert masked_max_diff(last, expected[-1], mask) <= PARITY_ATOL
  # The default call returns the last hidden state alone.
  plain = jax.jit(lambda p: model.apply({"params": p}, ids, mask, types))(params)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(last), atol=1e-6)


@pytest.mark.parametrize("length,buckets,max_relative", [(40, 8, 64), (600, 256, 512), (300, 256, -1), (50, -1, 6)])
def test_relative_position_tables_match_transformers(length, buckets, max_relative):
  from transformers.models.deberta_v2 import modeling_deberta_v2 as hf  # pylint: disable=import-outside-toplevel
  config = DebertaV2Config(**{**BASE, "relative_attention": True, "position_buckets": buckets,
                              "max_relative_positions": max_relative, "max_position_embeddings": 512})
  layer = torch.zeros(1, length, 1)
  relative = hf.build_relative_position(layer, layer, bucket_size=config.position_buckets,
                                        max_position=config.relative_range)[0].numpy()
  span = config.att_span
  c2p, p2c, first, count = deberta_v2.relative_position_tables(length, span, config.position_buckets,
                                                               config.relative_range)
  np.testing.assert_array_equal(c2p + first, np.clip(relative + span, 0, 2 * span - 1))
  np.testing.assert_array_equal(p2c + first, np.clip(-relative + span, 0, 2 * span - 1))
  assert 0 <= first and first + count <= 2 * span and count == max(c2p.max(), p2c.max()) + 1


@pytest.mark.parametrize("layer_loop", ["scan", "unroll"])
def test_gradients_match_transformers(layer_loop):
  config = make_config("xxlarge")
  reference = torch_model(config)
  ids, mask, _ = padded_batch(config)
  weights = np.random.RandomState(1).normal(size=(*ids.shape, config.hidden_size)).astype(np.float32)
  weights *= mask[..., None]

  out = reference(torch.tensor(ids), torch.tensor(mask)).last_hidden_state
  (out * torch.tensor(weights)).sum().backward()
  expected = deberta_v2_convert.hf_to_flax({n: p.grad for n, p in reference.named_parameters()}, config)

  model = DebertaV2Model(config, layer_loop=layer_loop)
  params = deberta_v2_convert.hf_to_flax(reference.state_dict(), config)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids, mask) * weights)))(params)
  flat_ours = jax.tree_util.tree_leaves_with_path(grads)
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  for path, ours in flat_ours:
    theirs = flat_expected[path]
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-5 * scale, rtol=0,
                               err_msg=jax.tree_util.keystr(path))
  # The pad row gets no gradient, as with PyTorch's padding_idx.
  assert not np.any(np.asarray(grads["embeddings"]["word_embeddings"]["embedding"][config.pad_token_id]))


def test_bfloat16_compute_stays_close_to_float32():
  config = make_config("xxlarge")
  params = deberta_v2.init_params(DebertaV2Model(config), jax.random.PRNGKey(0))
  ids, mask, _ = padded_batch(config)
  full = jax.jit(lambda p: DebertaV2Model(config).apply({"params": p}, ids, mask))(params)
  half = jax.jit(lambda p: DebertaV2Model(config, dtype=jnp.bfloat16).apply({"params": p}, ids, mask))(params)
  assert half.dtype == jnp.bfloat16
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x: x.dtype == jnp.float32, params))
  # LayerNorm outputs are O(1); bfloat16 keeps 8 mantissa bits through 3 layers.
  assert masked_max_diff(half, np.asarray(full), mask) < 0.1


@pytest.mark.parametrize("policy", ["full"])
def test_remat_gives_same_outputs_and_gradients(policy):
  config = make_config("xxlarge")
  ids, mask, _ = padded_batch(config)
  plain, remat = DebertaV2Model(config), DebertaV2Model(config, remat_policy=policy)
  params = deberta_v2.init_params(plain, jax.random.PRNGKey(0))

  def loss(model, p):
    return jnp.sum(jnp.tanh(model.apply({"params": p}, ids, mask)) * mask[..., None])

  value_plain, grads_plain = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  value_remat, grads_remat = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(value_remat, value_plain, rtol=1e-6)
  # Recomputation reorders float32 sums; compare at the scale of each gradient.
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6 * max(1.0, float(np.abs(b).max())), rtol=0),
      grads_remat, grads_plain)


def test_layer_loop_changes_the_program_not_the_parameters():
  config = dataclasses.replace(make_config("xxlarge"), num_hidden_layers=4)
  ids = jnp.zeros((2, 16), jnp.int32)
  programs, trees = {}, {}
  for loop in ("scan", "unroll"):
    model = DebertaV2Model(config, layer_loop=loop)
    params = jax.eval_shape(lambda m=model: deberta_v2.init_params(m, jax.random.PRNGKey(0)))
    trees[loop] = jax.tree.map(lambda leaf: leaf.shape, params)
    programs[loop] = jax.jit(lambda p, m=model: m.apply({"params": p}, ids)).lower(params).as_text()
  assert trees["scan"] == trees["unroll"]  # same stacked `layers` axis: checkpoints and rules unchanged
  assert "stablehlo.while" in programs["scan"] and "stablehlo.while" not in programs["unroll"]


def test_auto_layer_loop_resolves_per_platform(monkeypatch):
  assert deberta_v2.resolve_layer_loop("scan") == "scan"
  assert deberta_v2.resolve_layer_loop("unroll", "cpu") == "unroll"
  assert deberta_v2.resolve_layer_loop("auto", "cpu") == deberta_v2.AUTO_LAYER_LOOP["cpu"]
  assert deberta_v2.resolve_layer_loop("auto", "tpu") == deberta_v2.AUTO_LAYER_LOOP_OTHERWISE
  other = {"scan": "unroll", "unroll": "scan"}[deberta_v2.AUTO_LAYER_LOOP["cpu"]]
  monkeypatch.setitem(deberta_v2.AUTO_LAYER_LOOP, "cpu", other)
  assert deberta_v2.resolve_layer_loop("auto") == other  # this test suite runs on CPU
  with pytest.raises(ValueError, match="layer_loop"):
    deberta_v2.resolve_layer_loop("sometimes")
  with pytest.raises(ValueError, match="layer_loop"):
    deberta_v2.init_params(DebertaV2Model(make_config("xxlarge"), layer_loop="sometimes"), jax.random.PRNGKey(0))


def test_unknown_remat_policy_is_rejected():
  config = make_config("v3")
  with pytest.raises(ValueError, match="remat_policy"):
    deberta_v2.init_params(DebertaV2Model(config, remat_policy="sometimes"), jax.random.PRNGKey(0))


def test_dropout_is_active_only_when_not_deterministic():
  config = make_config("xxlarge")
  model = DebertaV2Model(config)
  params = deberta_v2.init_params(model, jax.random.PRNGKey(0))
  ids, mask, _ = padded_batch(config)

  @jax.jit
  def run(key):
    return model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": key})

  first, again, other = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  np.testing.assert_array_equal(first, again)
  assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-3
  deterministic = jax.jit(lambda p: model.apply({"params": p}, ids, mask))(params)
  assert np.abs(np.asarray(first) - np.asarray(deterministic)).max() > 1e-3


def test_scanned_parameters_carry_logical_axes():
  config = make_config("xxlarge")
  axes = nn.get_partition_spec(deberta_v2.abstract_params(DebertaV2Model(config)))
  assert tuple(axes["encoder"]["layer"]["attention"]["self"]["query_proj"]["kernel"]) == (
      "layers", "embed", "heads", "kv")
  assert tuple(axes["encoder"]["layer_0"]["attention"]["output"]["dense"]["kernel"]) == ("heads", "kv", "embed")
  assert tuple(axes["encoder"]["layer"]["intermediate"]["dense"]["kernel"]) == ("layers", "embed", "mlp")
  assert tuple(axes["embeddings"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
  assert tuple(axes["encoder"]["conv"]["conv"]["kernel"]) == ("conv_window", "conv_in", "embed")
  proj = DebertaV2Config(**{**BASE, **VARIANTS["embed_proj_grouped_conv"]})
  proj_axes = nn.get_partition_spec(deberta_v2.abstract_params(DebertaV2Model(proj)))["embeddings"]
  assert tuple(proj_axes["word_embeddings"]["embedding"]) == ("vocab", "input_embed")
  assert tuple(proj_axes["embed_proj"]["kernel"]) == ("input_embed", "embed")


@pytest.mark.parametrize("bad,message", [
    (dict(hidden_size=30), "not a multiple of num_attention_heads"),
    (dict(pos_att_type="c2p|p2p"), "pos_att_type"),
    (dict(conv_kernel_size=4), "must be odd"),
    (dict(hidden_act="gelu_fancy"), "hidden_act"),
    (dict(norm_rel_ebd="batch_norm"), "norm_rel_ebd"),
])
def test_invalid_config_is_rejected(bad, message):
  with pytest.raises(ValueError, match=message):
    DebertaV2Config(**{**BASE, **bad})


def test_config_round_trips_through_transformers(tmp_path):
  config = make_config("embed_proj_grouped_conv")
  assert DebertaV2Config.from_hf(config.to_transformers()) == config
  assert DebertaV2Config.from_hf(config.to_hf_dict()) == config
  config.to_transformers().save_pretrained(tmp_path)
  assert DebertaV2Config.from_hf(tmp_path) == config
  assert DebertaV2Config.from_hf(tmp_path / "config.json") == config
  with pytest.raises(ValueError, match="model_type"):
    DebertaV2Config.from_hf({**config.to_hf_dict(), "model_type": "bert"})
  with pytest.raises(FileNotFoundError, match="nowhere"):
    DebertaV2Config.from_hf(tmp_path / "nowhere")


def test_bad_inputs_are_rejected():
  config = make_config("v3")
  model = DebertaV2Model(config)
  params = jax.eval_shape(lambda: deberta_v2.init_params(model, jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match="attention_mask shape"):
    jax.eval_shape(lambda p: model.apply({"params": p}, jnp.ones((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32)),
                   params)
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    jax.eval_shape(lambda p: model.apply({"params": p}, jnp.ones((5,), jnp.int32)), params)


def test_scan_keeps_compile_size_independent_of_depth():
  """A deeper model traces the same one-layer scan body: the lowered program barely grows."""
  sizes = []
  for layers in (3, 12):
    config = dataclasses.replace(make_config("xxlarge"), num_hidden_layers=layers)
    model = DebertaV2Model(config, layer_loop="scan")
    params = jax.eval_shape(lambda m=model: deberta_v2.init_params(m, jax.random.PRNGKey(0)))
    ids = jnp.zeros((2, 16), jnp.int32)
    sizes.append(len(jax.jit(lambda p, m=model: m.apply({"params": p}, ids)).lower(params).as_text()))
  assert sizes[1] < sizes[0] * 1.05
