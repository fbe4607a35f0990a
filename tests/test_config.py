"""TrainConfig: flags, flagfiles and JSON round trips."""

import dataclasses
import pathlib

from absl import flags
import pytest

from d2e2s_jax.training import config as config_lib
from experiments import train as train_entry

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGFILES = sorted((REPO / "experiments" / "configs").glob("*.flags"))


def _parse(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["train", "--workdir=/tmp/unused", *args])
  try:
    return train_entry.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()


def test_every_field_has_a_flag_with_help():
  for field in dataclasses.fields(config_lib.TrainConfig):
    assert field.name in flags.FLAGS, field.name
    assert flags.FLAGS[field.name].help.strip(), field.name


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=lambda p: p.name)
def test_flagfiles_parse_into_valid_configs(flagfile):
  config = _parse(f"--flagfile={flagfile}")
  assert config_lib.TrainConfig.from_json(config.to_json()) == config
  if flagfile.name[:5] in ("14res", "14lap", "15res", "16res"):
    assert config.dataset == flagfile.name[:5]
    assert config.encoder.startswith("microsoft/deberta-v")
    assert (config.lr, config.batch_size, config.max_span_size) in ((5e-6, 16, 6), (1e-5, 16, 6))


def test_guide_settings_for_xxlarge():
  config = _parse(f"--flagfile={REPO / 'experiments' / 'configs' / '14res.flags'}")
  assert (config.hidden_dim, config.drop_out_rate, config.prop_drop, config.gcn_dropout) == (768, 0.3, 0.05, 0.1)
  assert (config.neg_entity_count, config.neg_triple_count, config.epochs) == (50, 50, 120)


def test_flag_types_round_trip():
  config = _parse("--synthetic", "--synthetic_sizes=10,2,3", "--moment_dtype=bfloat16", "--lr=0.001",
                  "--remat_policy=full", "--mesh=data:2")
  assert config.synthetic and config.synthetic_sizes == (10, 2, 3)
  assert config.moment_dtype == "bfloat16" and config.lr == 1e-3 and config.data_dir is None
  encoder = config.scratch_encoder_config(vocab_size=100, pad_token_id=0)
  model_config = config.model_config(encoder)
  assert model_config.remat_policy == "full" and model_config.hidden_dim == encoder.hidden_size // 2


def test_from_json_rejects_unknown_fields():
  with pytest.raises(ValueError, match="unknown settings: learning_rate"):
    config_lib.TrainConfig.from_json({"learning_rate": 1.0})


def test_lean_overlay_after_a_dataset_flagfile():
  configs = REPO / "experiments" / "configs"
  config = _parse(f"--flagfile={configs / '14res.flags'}", f"--flagfile={configs / 'lean_16gb.flags'}")
  assert (config.dataset, config.lr, config.remat_policy, config.compute_dtype) == ("14res", 5e-6, "full", "bfloat16")
  optimizer = config.optimizer_config()
  assert (optimizer.second_moment, optimizer.first_moment, optimizer.b1, optimizer.update) == (
      "factored", False, 0.0, "sliced")
