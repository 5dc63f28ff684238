r"""FogNet on ASM-fogged UCF-101 (paper Table 4): the FogAct recipe on the fogged dataset.

The foggy stream is synthesised at dataset build time from the original videos in the manual
directory (see docs/data.md); the clean stream is kept, so training is paired as on FogAct.

  python -m fognet_jax.main --config=configs/ucf101_fog.py --workdir=runs/ucf101_fog \
      --config.data.manual_dir=/data/UCF-101
This file takes configs/fogact.py's recipe and changes the dataset; variants as there, e.g.
`--config=configs/ucf101_fog.py:frames=4,views=4x1`.
"""
from fognet_jax import config_lib

fogact = config_lib.import_config_file(__file__, 'fogact.py')


def get_config(arg=None):
  """The FogAct recipe on UCF-101, modified by the variant tokens in `arg`."""
  config = fogact.get_config(arg)
  config.data.dataset = 'ucf101_fog'
  return config
