r"""FogNet on ASM-fogged UCF-101 (paper Table 4): the FogAct recipe on the fogged dataset.

The foggy stream is synthesised at dataset build time from the original videos in the manual
directory (see docs/data.md); the clean stream is kept, so training is paired as on FogAct.

  python -m fognet_jax.main --config=configs/ucf101_fog.py --workdir=runs/ucf101_fog \
      --config.data.manual_dir=/data/UCF-101
Variants as in configs/fogact.py, e.g. `--config=configs/ucf101_fog.py:frames=4,views=4x1`.
"""
from fognet_jax import config_lib


def get_config(variant=None):
  """Returns the paper recipe on UCF-101, modified by an optional variant string."""
  return config_lib.apply_variants(config_lib.paper_config('ucf101_fog'), variant)
