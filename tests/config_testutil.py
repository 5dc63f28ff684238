"""Config blocks for tests: the blocks of configs/fogact.py with library-neutral defaults.

The recipe loads OpenAI weights in bfloat16 from FogAct; tests build small models from random
weights in float32 on generated data, so these helpers return the recipe's blocks with
`model.init_from=None`, `model.dtype='float32'` and `data.dataset='synthetic_fog_act'`.
"""

from fognet_jax import config_lib


def recipe(arg=None):
  """configs/fogact.py's whole config (with the test defaults above), unlocked."""
  config = config_lib.load_config('fogact' + (f':{arg}' if arg else ''))
  config.model.init_from = None
  config.model.dtype = 'float32'
  config.data.dataset = 'synthetic_fog_act'
  return config


def model_block():
  return recipe().model


def loss_block():
  return recipe().loss


def data_block():
  return recipe().data


def parse(*args):
  """The config that `--config=... --config.KEY=VALUE ...` gives (main's flag, in-process)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv = ['prog', *args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, 'cfg', flag_values=fv, lock_config=True, sys_argv=argv
  )
  fv(argv)
  return fv.config
