r"""FogNet on ASM-fogged HMDB-51 (paper Table 4): the FogAct recipe on the fogged dataset.

The foggy stream is synthesised at dataset build time from the original videos in the manual
directory (see docs/data.md); the clean stream is kept, so training is paired as on FogAct.

  python -m fognet_jax.main --config=configs/hmdb51_fog.py --workdir=runs/hmdb51_fog \
      --config.data.manual_dir=/data/HMDB-51
This file takes configs/fogact.py's recipe and changes the dataset; variants as there, e.g.
`--config=configs/hmdb51_fog.py:frames=4,views=4x1`.
"""

import importlib.util
import os


def _config_file(name):
  """The module of configs/<name>.py, loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'fognet_configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


fogact = _config_file('fogact')


def get_config(arg=None):
  """The FogAct recipe on HMDB-51, modified by the variant tokens in `arg`."""
  config = fogact.get_config(arg)
  config.data.dataset = 'hmdb51_fog'
  return config
