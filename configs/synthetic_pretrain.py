r"""Clean pretraining of the small CLIP that configs/synthetic.py fine-tunes (the analogue of
CLIP's web pretraining at this scale).

ActionCLIP-style video-text contrastive training (ActionCLIP's KL loss, mean-fused frames, one
tower) on the CLEAN stream only of `synthetic_fog_act/pretrain`: 5600 generated clips with
their own generation seed, so none of them is a train or test clip of the Table 5 split
(`synthetic_fog_act/default`). No foggy frame is read. Then:

  python -m fognet_jax.main --config=configs/synthetic_pretrain.py --workdir=workdir/pretrain
  python -m fognet_jax.export_clip --workdir=workdir/pretrain --out=DIR   # the CLIP towers

DIR is a `clip_weights.save` directory that `model.init_from` loads like OpenAI or Hugging
Face weights. The committed copy is `pretrained/synthetic_tiny_clip/` (its figures and the
command that made it are in pretrained/README.md).
"""
from fognet_jax import config_lib

synthetic = config_lib.import_config_file(__file__, 'synthetic.py')


def get_config(arg=None):
  """The clean pretraining recipe, modified by the variant tokens in `arg`."""
  config = synthetic.get_config('scratch,baseline,train=clean,test=clean')
  config.data.dataset = 'synthetic_fog_act/pretrain'
  config.train.batch_size = 32
  config.train.num_train_steps = 8000
  config.train.learning_rate = 2e-3
  config.train.warmup_epochs = 1.0
  config.train.checkpoint_every_steps = 1000
  config.train.log_every_steps = 250
  return synthetic.fogact.apply_variant(config, arg)
