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


# ------------------------------------------------------------------ one definition


def test_component_configs_built_in_python_equal_the_cli_defaults():
  """`D2E2SConfig()`, `OptimizerConfig()`, `BatchConfig()` as another JAX project builds
  them equal what the command line derives with default flags, field by field."""
  from d2e2s_jax.data import batching  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.models import d2e2s  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.models.deberta_v2_config import DebertaV2Config  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.training import optim  # pylint: disable=import-outside-toplevel

  cli = _parse()
  encoder = DebertaV2Config(vocab_size=100, hidden_size=768, num_attention_heads=12)
  pairs = ((d2e2s.D2E2SConfig(), cli.model_config(encoder), d2e2s.SETTING_NAMES),
           (optim.OptimizerConfig(), cli.optimizer_config(), optim.SETTING_NAMES),
           (batching.BatchConfig(), cli.batch_config(_PadTokenizer(), training=True), batching.SETTING_NAMES))
  for python, derived, names in pairs:
    assert names, type(python).__name__
    for field in names:
      assert getattr(python, field) == getattr(derived, field), (type(python).__name__, field)
  assert d2e2s.D2E2SConfig().hidden_dim == 384  # 0 (the setting's default) = half the width


class _PadTokenizer:
  pad_token_id = 0


def test_every_setting_has_help_a_default_that_passes_its_rule_and_a_flag_of_its_type():
  from d2e2s_jax import settings  # pylint: disable=import-outside-toplevel

  for name, field in settings.FIELDS.items():
    assert settings.help_text(name).strip(), name
    settings.check_value(name, field.default)
    assert flags.FLAGS[name].default == (list(map(str, field.default)) if isinstance(field.default, tuple)
                                         else field.default), name


@pytest.mark.parametrize("name,value,message", [
    ("drop_out_rate", 1.5, "--drop_out_rate=1.5: must be in [0, 1)"),
    ("lr", -1.0, "--lr=-1.0: must be > 0"),
    ("lr", "fast", "--lr=fast: must be a number"),
    ("lr", float("nan"), "--lr=nan: must be a finite number"),
    ("batch_size", 0, "--batch_size=0: must be >= 1"),
    ("batch_size", 2.5, "--batch_size=2.5: must be an integer"),
    ("synthetic", 1, "--synthetic=1: must be true or false"),
    ("neg_entity_count", -2, "--neg_entity_count=-2: must be >= 0, or -1 for all"),
    ("graph_implementation", "sparse", "--graph_implementation=sparse: must be one of dense, jraph"),
    ("max_span_size", 100, "--max_span_size=100: must be in [1, 100)"),
    ("sen_filter_threshold", 1.0, "--sen_filter_threshold=1.0: must be in (0, 1)"),
    ("learning_rate", 1e-3, "--learning_rate=0.001: no such setting"),
])
def test_check_value_names_the_flag_and_the_rule(name, value, message):
  from d2e2s_jax import settings  # pylint: disable=import-outside-toplevel

  with pytest.raises(settings.SettingError) as error:
    settings.check_value(name, value)
  assert str(error.value) == message


@pytest.mark.parametrize("changes,message", [
    (dict(epochs=0, max_steps=0), "--max_steps=0: must be >= 1 when --epochs=0"),
    (dict(optimizer_update="sliced", gradient_accumulation_steps=2), "--gradient_accumulation_steps=2: must be 1"),
    (dict(scratch_hidden_size=30, scratch_heads=4), "--scratch_heads=4: must divide --scratch_hidden_size=30"),
    (dict(encoder="scratch", scratch_hidden_size=30, scratch_heads=2, attention_heads=4),
     "--attention_heads=4: must divide the encoder width (--scratch_hidden_size=30)"),
    (dict(encoder="scratch", hidden_dim=7), "--hidden_dim=7: must be 0 or half the encoder width"),
])
def test_inconsistent_settings_are_rejected(changes, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.TrainConfig(**changes)
  from d2e2s_jax import settings  # pylint: disable=import-outside-toplevel
  with pytest.raises(settings.SettingError):  # the same rules for a search space's partial values
    settings.check_combinations({**dataclasses.asdict(settings.DEFAULTS), **changes})


def test_a_pretrained_width_the_settings_do_not_fit_names_the_flag():
  from d2e2s_jax.models.deberta_v2_config import DebertaV2Config  # pylint: disable=import-outside-toplevel

  encoder = DebertaV2Config(vocab_size=100, hidden_size=1024, num_attention_heads=16)
  with pytest.raises(ValueError, match=r"^--hidden_dim=768: must be 0 or half the encoder width \(512\)$"):
    config_lib.TrainConfig(hidden_dim=768).model_config(encoder)
  with pytest.raises(ValueError, match=r"^--attention_heads=3: must divide the encoder width \(1024\)$"):
    config_lib.TrainConfig(attention_heads=3).model_config(encoder)


def test_component_configs_apply_the_settings_rules():
  from d2e2s_jax.data import batching  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.models import d2e2s  # pylint: disable=import-outside-toplevel

  with pytest.raises(ValueError, match=r"--drop_out_rate=1.5: must be in \[0, 1\)"):
    d2e2s.D2E2SConfig(drop_out_rate=1.5)
  with pytest.raises(ValueError, match="--neg_triple_count=-3"):
    batching.BatchConfig(neg_triple_count=-3)


def test_earlier_runs_config_json_still_loads():
  """A `checkpoints/config.json` written before the settings moved (same flat names)."""
  old = {**config_lib.TrainConfig().to_json(), "synthetic_sizes": [600, 150, 150], "first_moment": False}
  assert config_lib.TrainConfig.from_json(old).optimizer_config().b1 == 0.0


@pytest.mark.parametrize("args,message", [
    (["--drop_out_rate=1.5"], "error: --drop_out_rate=1.5: must be in [0, 1)"),
    (["--lr=-1"], "error: --lr=-1.0: must be > 0"),
    (["--seeds=1,x"], "error: --seeds=1,x: must be a comma-separated list of integers"),
])
def test_entry_point_rejects_a_bad_flag_in_one_line_before_any_work(tmp_path, args, message):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == message
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [message]
  assert not workdir.exists()  # nothing was started


def test_importing_inference_does_not_import_the_training_loop():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  code = ("import sys, d2e2s_jax.inference; "
          "print(sorted(m for m in sys.modules if m.startswith('d2e2s_jax.training')))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  loaded = eval(result.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  assert "d2e2s_jax.training.trainer" not in loaded and "d2e2s_jax.training.checkpoints" not in loaded
