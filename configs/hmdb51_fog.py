r"""FogNet on ASM-fogged HMDB-51 (paper Table 4): the FogAct recipe on the fogged dataset.

The foggy stream is synthesised at dataset build time from the original videos in the manual
directory (see docs/data.md); the clean stream is kept, so training is paired as on FogAct.

  python -m fognet_jax.main --config=configs/hmdb51_fog.py --workdir=runs/hmdb51_fog \
      --config.data.manual_dir=/data/HMDB-51
This file takes configs/fogact.py's recipe and changes the dataset; variants as there, e.g.
`--config=configs/hmdb51_fog.py:frames=4,views=4x1`.
"""
from fognet_jax import config_lib

fogact = config_lib.import_config_file(__file__, 'fogact.py')


def get_config(arg=None):
  """The FogAct recipe on HMDB-51, modified by the variant tokens in `arg`."""
  config = fogact.get_config(arg)
  config.data.dataset = 'hmdb51_fog'
  return config
