r"""The embedded default: the generated paired benchmark and a small CLIP trained from scratch.

Runs end to end on 2 CPU cores in under 10 minutes, the dataset build included (the first run
builds `synthetic_fog_act` with TFDS; later runs reuse it):

  python -m fognet_jax.main --config=configs/synthetic.py --workdir=workdir/demo

No downloads: the CLIP architecture is the 'tiny' preset with random initialisation and the
byte-level tokenizer. Everything else (FAS, ME, CSA, losses, schedule) is the paper's recipe.
Variants as in configs/fogact.py, e.g. `configs/synthetic.py:baseline`.
"""
from fognet_jax import config_lib


def get_config(variant=None):
  """Returns the small CPU config, modified by an optional variant string."""
  config = config_lib.base_config()
  config.data.dataset = 'synthetic_fog_act'
  config.data.num_frames = 8
  config.data.image_size = 64
  config.data.num_clips = 1
  config.data.num_crops = 1

  config.model.backbone = 'tiny'
  config.model.init_from = None
  config.model.dtype = 'float32'
  config.model.clip_overrides.image_size = 64
  config.model.clip_overrides.patch_size = 16  # 4x4 patches per frame: CPU-sized
  config.model.tokenizer.kind = 'byte'

  config.train.batch_size = 32
  config.train.num_epochs = 20.0
  config.train.learning_rate = 1e-3
  config.train.warmup_epochs = 1.0
  config.train.weight_decay = 0.05
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 60
  config.train.keep_checkpoints = 2
  config.eval.batch_size = 32
  return config_lib.apply_variants(config, variant)
