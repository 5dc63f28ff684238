r"""The embedded default: the generated paired benchmark and a small CLIP trained from scratch.

Runs end to end on 2 CPU cores in under 10 minutes, the dataset build included (the first run
builds `synthetic_fog_act` with TFDS; later runs reuse it):

  python -m fognet_jax.main --config=configs/synthetic.py --workdir=workdir/demo

No downloads: the CLIP architecture is the 'tiny' preset (patch 8 on 64x64 frames) with random
initialisation and the byte-level tokenizer; FAS, ME, CSA and the losses are the paper's. What
differs from the paper's recipe is what a from-scratch model on ~1000 clips needs: 4 frames,
frame centering (`model.frame_centering`), light augmentation, β = 1 for L_temp, a higher
learning rate, no weight decay, 1500 steps of 16 clip pairs.
Every other key is configs/fogact.py's (the paper's recipe), which this file starts from;
variants as there, e.g. `configs/synthetic.py:baseline`.
"""
from fognet_jax import config_lib

fogact = config_lib.import_config_file(__file__, 'fogact.py')


def get_config(arg=None):
  """The small CPU recipe, modified by the variant tokens in `arg`."""
  config = fogact.get_config()
  config.data.dataset = 'synthetic_fog_act'
  config.data.num_frames = 4
  config.data.image_size = 64
  config.data.num_clips = 1
  config.data.num_crops = 1
  # Light augmentation: flips (with the mirror-pair label swap) and whole-frame crops only.
  config.data.augment.color_jitter_prob = 0.0
  config.data.augment.grayscale_prob = 0.0
  config.data.augment.scales = (1.0,)

  config.model.backbone = 'tiny'
  config.model.init_from = None
  config.model.dtype = 'float32'
  config.model.clip_overrides.image_size = 64
  config.model.clip_overrides.patch_size = 8   # 8x8 patches per frame
  config.model.tokenizer.kind = 'byte'
  # The byte tokenizer's ids are 0..258: a text tower with CLIP's 49408 token embeddings
  # would train (and store, and zero-fill the gradient of) 49149 rows no prompt uses.
  config.model.clip_overrides.vocab_size = 259
  # A tower trained from scratch on ~1000 clips otherwise locks onto the static background.
  config.model.frame_centering = True

  # A stronger Cross-Stream Alignment term (β = 1 instead of the paper's 0.1): the frame-level
  # clean/foggy contrast is what first pulls a from-scratch tower off the collapsed start.
  config.loss.beta_temp = 1.0

  config.train.batch_size = 16
  config.train.num_train_steps = 1500
  config.train.learning_rate = 2e-3
  config.train.warmup_epochs = 0.5
  config.train.weight_decay = 0.0
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  config.train.keep_checkpoints = 2
  config.eval.batch_size = 32
  return fogact.apply_variant(config, arg)
