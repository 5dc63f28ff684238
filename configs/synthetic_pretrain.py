r"""Clean pretraining of the small CLIP that configs/synthetic.py fine-tunes (the analogue of
CLIP's web pretraining at this scale).

ActionCLIP-style video-text contrastive training (ActionCLIP's KL loss, mean-fused frames, one
tower) on the CLEAN stream only of `synthetic_fog_act/pretrain`: 16800 generated clips with
their own generation seed, so none of them is a train or test clip of the Table 5 split
(`synthetic_fog_act/default`). No foggy frame is read. Then:

  python -m fognet_jax.main --config=configs/synthetic_pretrain.py --workdir=workdir/pretrain
  python -m fognet_jax.export_clip --workdir=workdir/pretrain --out=DIR   # the CLIP towers

DIR is a `clip_weights.save` directory that `model.init_from` loads like OpenAI or Hugging
Face weights. The committed copy is `pretrained/synthetic_tiny_clip/` (its figures and the
command that made it are in pretrained/README.md).
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


synthetic = _config_file('synthetic')


def get_config(arg=None):
  """The clean pretraining recipe, modified by the variant tokens in `arg`."""
  config = synthetic.get_config('scratch,baseline,train=clean,test=clean')
  config.data.dataset = 'synthetic_fog_act/pretrain'
  config.train.batch_size = 32
  config.train.num_train_steps = 20000
  # No flips: once the clip-mean frame is subtracted, a flipped front view of `wave_left` looks
  # like a back view of `wave_left` but carries the label `wave_right` (pretrained/README.md).
  config.data.augment.flip = False
  config.train.learning_rate = 2e-3
  config.train.warmup_epochs = 1.0
  config.train.checkpoint_every_steps = 1000
  config.train.log_every_steps = 250
  return synthetic.fogact.apply_variant(config, arg)
