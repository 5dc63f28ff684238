r"""FogNet on ASM-fogged HMDB-51 (paper Table 4): the FogAct recipe on the fogged dataset.

The foggy stream is synthesised at dataset build time from the original videos in the manual
directory (see docs/data.md); the clean stream is kept, so training is paired as on FogAct.

  python -m fognet_jax.main --config=configs/hmdb51_fog.py --workdir=runs/hmdb51_fog \
      --config.data.manual_dir=/data/HMDB-51
Variants as in configs/fogact.py, e.g. `--config=configs/hmdb51_fog.py:frames=4,views=4x1`.
"""
from fognet_jax import config_lib


def get_config(variant=None):
  """Returns the paper recipe on HMDB-51, modified by an optional variant string."""
  return config_lib.apply_variants(config_lib.paper_config('hmdb51_fog'), variant)
