r"""FogNet on FogAct: the paper's setting (section 5.1) and its Table 5 ablations.

CLIP ViT-B/16 initialised from the OpenAI weights (`model.init_from`: a hub name or a local
directory / .pt file), 8 frames at 224x224, batch 128, 30 epochs, AdamW at 5e-5 with a 5-epoch
linear warm-up and cosine annealing, lambda=0.4, beta=0.1, one 1x1 view at test time.

  python -m fognet_jax.main --config=configs/fogact.py --workdir=runs/fogact \
      --config.data.manual_dir=/data/FogAct
Ablations, comma-separated after the colon (full list: fognet_jax.config_lib.apply_variants):
  --config=configs/fogact.py:baseline            ActionCLIP baseline (Table 5a, first row)
  --config=configs/fogact.py:modules=fas+me      other Table 5a rows (fas, me, csa, none)
  --config=configs/fogact.py:b32                 Table 5d backbones (b32 | b16 | l14 | rn50)
  --config=configs/fogact.py:frames=4,views=4x1  Table 5e
  --config=configs/fogact.py:dense               Table 5f (light | dense | multi)
  --config=configs/fogact.py:single_persp        Table 5c
"""
from fognet_jax import config_lib


def get_config(variant=None):
  """Returns the paper config, modified by an optional variant string."""
  return config_lib.apply_variants(config_lib.paper_config('fogact'), variant)
