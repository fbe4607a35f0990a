"""Edge cases of the DeBERTa-v2 encoder that released configs do not hit but HF configs allow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from d2e2s_jax.models import deberta_v2  # pylint: disable=wrong-import-position
from d2e2s_jax.models import deberta_v2_convert  # pylint: disable=wrong-import-position
from tests.test_deberta_v2 import BASE, PARITY_ATOL, masked_max_diff, padded_batch, torch_model  # pylint: disable=wrong-import-position


def test_layer_norm_of_relative_embeddings_without_relative_attention():
  """`transformers` creates `encoder.LayerNorm` from `norm_rel_ebd` alone; it must round-trip."""
  config = deberta_v2.DebertaV2Config(**{**BASE, "relative_attention": False, "norm_rel_ebd": "layer_norm",
                                         "position_biased_input": True, "pos_att_type": "c2p"})
  reference = torch_model(config)
  state = {name: deberta_v2_convert.to_numpy(value) for name, value in reference.state_dict().items()}
  assert "encoder.LayerNorm.weight" in state
  params = deberta_v2_convert.hf_to_flax(state, config)
  back = deberta_v2_convert.flax_to_hf(params, config)
  assert sorted(back) == sorted(state)
  np.testing.assert_array_equal(back["encoder.LayerNorm.weight"], state["encoder.LayerNorm.weight"])
  ids, mask, _ = padded_batch(config)
  with torch.no_grad():
    expected = reference(torch.tensor(ids), torch.tensor(mask)).last_hidden_state.numpy()
  ours = deberta_v2.DebertaV2Model(config).apply({"params": params}, ids, mask)
  assert masked_max_diff(ours, expected, mask) <= PARITY_ATOL


def test_sequence_longer_than_absolute_positions_is_rejected():
  config = deberta_v2.DebertaV2Config(**{**BASE, "max_position_embeddings": 8, "position_biased_input": True})
  model = deberta_v2.DebertaV2Model(config)
  params = deberta_v2.init_params(model, jax.random.PRNGKey(0))
  assert model.apply({"params": params}, jnp.ones((1, 8), jnp.int32)).shape == (1, 8, config.hidden_size)
  with pytest.raises(ValueError, match="input length 9 exceeds max_position_embeddings 8"):
    model.apply({"params": params}, jnp.ones((1, 9), jnp.int32))
  # Relative positions alone have no such limit: buckets cover any length.
  relative = deberta_v2.DebertaV2Config(**{**BASE, "max_position_embeddings": 8, "position_biased_input": False,
                                           "relative_attention": True, "position_buckets": 4,
                                           "pos_att_type": "c2p|p2c"})
  relative_model = deberta_v2.DebertaV2Model(relative)
  relative_params = deberta_v2.init_params(relative_model, jax.random.PRNGKey(0))
  out = relative_model.apply({"params": relative_params}, jnp.ones((1, 20), jnp.int32))
  assert out.shape == (1, 20, relative.hidden_size) and bool(jnp.all(jnp.isfinite(out)))
