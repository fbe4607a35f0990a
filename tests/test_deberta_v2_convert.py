"""Weight conversion and checkpoint files: HF <-> Flax, loading and saving directories."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from d2e2s_jax.models import deberta_v2  # pylint: disable=wrong-import-position
from d2e2s_jax.models import deberta_v2_convert as convert  # pylint: disable=wrong-import-position
from tests.test_deberta_v2 import PARITY_ATOL, make_config, masked_max_diff, padded_batch, torch_hidden_states, torch_model  # pylint: disable=wrong-import-position,line-too-long

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(name="xxlarge")
def fixture_xxlarge():
  config = make_config("xxlarge")
  return config, torch_model(config)


def jitted_last_hidden(model, params, ids, mask):
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids, mask))(params))


@pytest.mark.parametrize("variant", ["xxlarge", "separate_pos_proj", "embed_proj_grouped_conv", "absolute_positions"])
def test_flax_to_hf_to_flax_is_exact(variant):
  config = make_config(variant)
  params = deberta_v2.init_params(deberta_v2.DebertaV2Model(config), jax.random.PRNGKey(3))
  state_dict = convert.flax_to_hf(params, config)
  back = convert.hf_to_flax(state_dict, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.tree_util.tree_map(np.asarray, params))
  # The HF side has exactly the keys (and shapes) `transformers` builds for this config.
  expected = {k: tuple(v.shape) for k, v in torch_model(config).state_dict().items()}
  assert {k: v.shape for k, v in state_dict.items()} == expected


def test_prefixed_checkpoint_with_task_head_loads(xxlarge):
  config, reference = xxlarge
  state_dict = {f"deberta.{k}": v for k, v in reference.state_dict().items()}
  state_dict["classifier.weight"] = torch.zeros(3, config.hidden_size)
  state_dict["deberta.embeddings.position_embeddings.weight"] = torch.zeros(4, config.hidden_size)
  plain = convert.hf_to_flax(reference.state_dict(), config)
  prefixed = convert.hf_to_flax(state_dict, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, prefixed, plain)


def test_legacy_layer_norm_names_load(xxlarge):
  config, reference = xxlarge
  state_dict = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                for k, v in reference.state_dict().items()}
  jax.tree_util.tree_map(np.testing.assert_array_equal, convert.hf_to_flax(state_dict, config),
                         convert.hf_to_flax(reference.state_dict(), config))


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("encoder.layer.2.attention.self.key_proj.bias"), "encoder.layer.2.attention.self.key_proj.bias"),
    (lambda sd: sd.update({"encoder.layer.1.extra.weight": np.zeros(3)}), "encoder.layer.1.extra.weight"),
    (lambda sd: sd.update({"encoder.conv.conv.weight": np.zeros((32, 32, 5))}), "encoder.conv.conv.weight"),
    (lambda sd: sd.update({"embeddings.word_embeddings.weight": np.zeros((63, 32))}),
     "embeddings.word_embeddings.weight"),
])
def test_hf_to_flax_names_the_offending_key(xxlarge, edit, message):
  config, reference = xxlarge
  state_dict = {k: convert.to_numpy(v) for k, v in reference.state_dict().items()}
  edit(state_dict)
  with pytest.raises(convert.ConversionError, match=message.replace(".", r"\.")):
    convert.hf_to_flax(state_dict, config)


def test_flax_to_hf_names_the_offending_parameter(xxlarge):
  config, reference = xxlarge
  params = convert.hf_to_flax(reference.state_dict(), config)
  missing = jax.tree_util.tree_map(lambda x: x, params)
  del missing["encoder"]["conv"]
  with pytest.raises(convert.ConversionError, match="encoder/conv/LayerNorm/bias is missing"):
    convert.flax_to_hf(missing, config)
  extra = jax.tree_util.tree_map(lambda x: x, params)
  extra["encoder"]["pooler"] = {"kernel": np.zeros((2, 2))}
  with pytest.raises(convert.ConversionError, match="encoder/pooler/kernel"):
    convert.flax_to_hf(extra, config)
  reshaped = jax.tree_util.tree_map(lambda x: x, params)
  reshaped["encoder"]["layer"]["output"]["dense"]["bias"] = np.zeros((1, 32))
  with pytest.raises(convert.ConversionError, match="encoder/layer/output/dense/bias has shape"):
    convert.flax_to_hf(reshaped, config)


@pytest.mark.parametrize("file_format", ["safetensors", "pytorch_bin"])
def test_load_pretrained_from_a_transformers_directory(tmp_path, xxlarge, file_format):
  config, reference = xxlarge
  if file_format == "safetensors":
    reference.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
  else:
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
  model, params = convert.load_pretrained(str(tmp_path))
  assert model.config == config
  ids, mask, types = padded_batch(config)
  expected = torch_hidden_states(reference, ids, mask, types)[-1]
  assert masked_max_diff(jitted_last_hidden(model, params, ids, mask), expected, mask) <= PARITY_ATOL


def test_save_pretrained_loads_in_transformers(tmp_path, xxlarge):
  config, reference = xxlarge
  params = convert.hf_to_flax(reference.state_dict(), config)
  convert.save_pretrained(params, config, str(tmp_path))
  reloaded, info = transformers.DebertaV2Model.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  ids, mask, types = padded_batch(config)
  theirs = torch_hidden_states(reloaded.eval(), ids, mask, types)[-1]
  ours = jitted_last_hidden(deberta_v2.DebertaV2Model(config), params, ids, mask)
  assert masked_max_diff(ours, theirs, mask) <= PARITY_ATOL
  _, again = convert.load_pretrained(str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)
  # The host read (what a sharded run places shard by shard): the same, as numpy.
  read_config, host = convert.read_pretrained(str(tmp_path))
  assert read_config == config
  assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree_util.tree_leaves(host))
  jax.tree_util.tree_map(np.testing.assert_array_equal, host, params)


def test_to_numpy_takes_tensors_that_need_grad_and_bfloat16():
  tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
  np.testing.assert_array_equal(convert.to_numpy(tensor), np.arange(6, dtype=np.float32).reshape(2, 3))
  half = convert.to_numpy(tensor.detach().to(torch.bfloat16))
  assert half.dtype == np.float32 and half.tolist() == [[0, 1, 2], [3, 4, 5]]
  assert convert.to_numpy(np.ones(2, np.float16)).dtype == np.float16  # arrays pass through


def test_load_pretrained_reports_a_bad_checkpoint_with_its_directory(tmp_path, xxlarge):
  config, reference = xxlarge
  state_dict = {k: convert.to_numpy(v) for k, v in reference.state_dict().items()}
  del state_dict["encoder.rel_embeddings.weight"]
  convert.write_safetensors(state_dict, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
  with pytest.raises(convert.ConversionError, match=f"{tmp_path}.*encoder.rel_embeddings.weight"):
    convert.load_pretrained(str(tmp_path))
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    convert.load_pretrained(str(tmp_path))


def test_missing_local_directory_is_a_one_line_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="absent: not a directory"):
    convert.load_pretrained(str(tmp_path / "absent"))


def test_hub_name_offline_and_not_cached_is_a_one_line_error(tmp_path):
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": REPO_ROOT}
  script = ("from d2e2s_jax.models import deberta_v2_convert\n"
            "try:\n  deberta_v2_convert.load_pretrained('microsoft/deberta-v3-base')\n"
            "except FileNotFoundError as e:\n  print('ERROR:', e)\n")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
  lines = [l for l in result.stdout.splitlines() if l.startswith("ERROR:")]
  assert len(lines) == 1 and "\n" not in lines[0], result.stdout + result.stderr
  assert "microsoft/deberta-v3-base" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_and_sharded_safetensors_load(tmp_path, xxlarge, dtype):
  """bfloat16 files (which safetensors' numpy API refuses) and sharded indexes load as float32."""
  config, reference = xxlarge
  half = reference.to(getattr(torch, dtype))
  half.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  _, params = convert.load_pretrained(str(tmp_path))
  expected = convert.hf_to_flax({k: v.float() for k, v in half.state_dict().items()}, config)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, expected)
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
