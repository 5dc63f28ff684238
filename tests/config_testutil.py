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
