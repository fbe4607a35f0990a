"""The flags that the training entry points share, defined once.

Importing this module defines one absl flag per setting of `d2e2s_jax.settings.Settings`
(same name, type, default and help) and `--compilation_cache_dir`. `experiments/train.py`
and `experiments/sweep.py` import it and adopt its flags as their own (so `--help` lists
them); `config_from_flags` turns the parsed values into a validated `TrainConfig`.
"""

import os
import typing

from absl import flags

from d2e2s_jax import settings
from d2e2s_jax.training import config as config_lib


def _define_setting_flags() -> None:
  """One flag per setting: its name, type, default and help (d2e2s_jax/settings.py)."""
  for name, field in settings.FIELDS.items():
    hint, default, help_text = settings.TYPES[name], field.default, settings.help_text(name)
    if hint is bool:
      flags.DEFINE_bool(name, default, help_text)
    elif hint is int:
      flags.DEFINE_integer(name, default, help_text)
    elif hint is float:
      flags.DEFINE_float(name, default, help_text)
    elif typing.get_origin(hint) is tuple:
      flags.DEFINE_list(name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


_define_setting_flags()
flags.DEFINE_string("compilation_cache_dir", "~/.cache/d2e2s_jax/xla",
                    "Persistent XLA compilation cache (reruns, resumes and --seeds skip recompiling); "
                    "empty disables it.")

FLAGS = flags.FLAGS


def config_from_flags() -> config_lib.TrainConfig:
  """The flags' values as a validated TrainConfig (`SettingError` names a bad flag)."""
  values = {}
  for name, field in settings.FIELDS.items():
    value = FLAGS[name].value
    if typing.get_origin(settings.TYPES[name]) is tuple:
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise settings.SettingError(name, value, "must be a comma-separated list of integers") from None
    elif value == "" and field.default is None:
      value = None
    values[name] = value
  return config_lib.TrainConfig(**values)


def enable_compilation_cache() -> None:
  """Turns on the persistent XLA cache at `--compilation_cache_dir` (unless empty)."""
  if FLAGS.compilation_cache_dir:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
