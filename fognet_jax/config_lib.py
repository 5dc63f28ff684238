"""Shared configuration pieces: the default blocks, variants and start-up validation.

Every experiment file in `configs/` builds its `ConfigDict` from `base_config()` and then
applies a variant string (`--config=configs/fogact.py:b32,frames=4`) with `apply_variants`.
`validate` checks a finished config before any expensive work and names the offending key.

Blocks of a config:
  data   `input_pipeline.get_config()`   dataset, frames, resolution, views, fog subset
  model  `fognet.get_config()`           backbone, init_from, dtype, FAS/ME/CSA switches
  loss   `losses.get_config()`           lambda_clean (λ), beta_temp (β), ...
  train  this module                     batch, epochs, AdamW, schedule, accumulation, ...
  eval   this module                     eval batch, split, templates, reports
  mesh   this module                     data-parallel / FSDP sharding
  seed   int                             everything random derives from it
"""
from __future__ import annotations

import os
from typing import Optional

import ml_collections

BACKBONE_ALIASES = {
    'b32': 'ViT-B/32', 'b16': 'ViT-B/16', 'l14': 'ViT-L/14', 'l14_336': 'ViT-L/14@336',
    'rn50': 'RN50', 'rn101': 'RN101', 'rn50x4': 'RN50x4', 'tiny': 'tiny',
}


def _model_block() -> ml_collections.ConfigDict:
  """The `model` block: `fognet.get_config()` (single source of truth)."""
  from fognet_jax.models import fognet  # pylint: disable=g-import-not-at-top
  return fognet.get_config()


def _loss_block() -> ml_collections.ConfigDict:
  """The `loss` block: `losses.get_config()`."""
  from fognet_jax import losses  # pylint: disable=g-import-not-at-top
  return losses.get_config()


def _data_block() -> ml_collections.ConfigDict:
  """The `data` block: `input_pipeline.get_config()`."""
  from fognet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.get_config()


def train_block() -> ml_collections.ConfigDict:
  """Optimisation defaults: the paper's section 5.1 setting."""
  t = ml_collections.ConfigDict()
  t.batch_size = 128            # global clip pairs per optimizer step (all hosts, all devices)
  t.num_epochs = 30.0           # used when num_train_steps <= 0
  t.num_train_steps = -1        # > 0 overrides num_epochs
  t.learning_rate = 5e-5        # AdamW peak learning rate
  t.warmup_epochs = 5.0         # linear warm-up, then cosine annealing to end_lr_ratio * peak
  t.end_lr_ratio = 0.0
  t.weight_decay = 0.2          # AdamW decoupled weight decay (ActionCLIP's value)
  t.b1 = 0.9
  t.b2 = 0.98
  t.eps = 1e-8
  t.grad_clip_norm = 0.0        # > 0: clip the global gradient norm
  t.grad_accum_steps = 1        # micro-batches per step; batch_size stays the effective batch
  t.freeze_text = False         # True: the text tower gets no updates (and no backward pass)
  t.freeze_text_pattern = r'(^|/)text(/|$)'  # parameter paths of the text tower
  t.num_templates = -1          # the first N prompt templates are drawn from; -1 = all 16
  t.log_every_steps = 50
  t.checkpoint_every_steps = 500
  t.keep_checkpoints = 3
  t.async_checkpointing = True
  t.profile = False
  return t


def eval_block() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.batch_size = 32             # global videos per evaluation batch (each with all its views)
  e.split = 'test'
  e.num_templates = -1          # prompt templates averaged at test time; -1 = all
  e.confusion_matrix = True     # write confusion_matrix.png (paper Figure 7)
  e.after_training = True       # mode=train also evaluates at the end (train_and_eval)
  return e


def mesh_block() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.fsdp = False                # shard params + optimizer state over the data axis
  m.fsdp_min_size = 2 ** 14     # arrays with fewer elements stay replicated
  m.num_devices = -1            # -1 = all devices of all processes
  return m


def distributed_block() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # 'auto': call jax.distributed.initialize() when the environment describes a multi-process
  # job (TPU pod slices, SLURM, JAX_COORDINATOR_ADDRESS); True: always; False: never.
  d.initialize = 'auto'
  return d


def base_config() -> ml_collections.ConfigDict:
  """Paper defaults for every block; experiment files adjust them."""
  config = ml_collections.ConfigDict()
  config.data = _data_block()
  config.model = _model_block()
  config.loss = _loss_block()
  config.train = train_block()
  config.eval = eval_block()
  config.mesh = mesh_block()
  config.distributed = distributed_block()
  config.seed = 0
  return config


def paper_config(dataset: str) -> ml_collections.ConfigDict:
  """The paper's section 5.1 recipe on `dataset` (FogAct or a fogged public dataset).

  CLIP ViT-B/16 from the OpenAI weights, 8 frames at 224x224, batch 128, 30 epochs, AdamW
  5e-5 with 5 warm-up epochs then cosine, lambda=0.4, beta=0.1, a single 1x1 test view.
  """
  config = base_config()
  config.data.dataset = dataset
  config.data.num_frames = 8
  config.data.image_size = 224
  config.data.num_clips = 1
  config.data.num_crops = 1
  config.model.backbone = 'ViT-B/16'
  config.model.init_from = pretrained_name('ViT-B/16')
  config.model.dtype = 'bfloat16'
  config.model.arch = 'fognet'
  config.train.batch_size = 128
  config.train.num_epochs = 30.0
  config.train.learning_rate = 5e-5
  config.train.warmup_epochs = 5.0
  config.loss.lambda_clean = 0.4
  config.loss.beta_temp = 0.1
  return config


# ----------------------------------------------------------------------------------- variants

_MODULES = ('fas', 'me', 'csa')


def _set_module(model: ml_collections.ConfigDict, name: str, on: bool) -> None:
  """Switches FAS / ME / CSA on or off whatever shape the model block gives the switch."""
  if name not in model:
    raise KeyError(f'model.{name} is not a key of the model block; cannot switch it')
  value = model[name]
  if isinstance(value, ml_collections.ConfigDict):
    for key in ('enabled', 'enable', 'use', 'on'):
      if key in value:
        value[key] = on
        return
    raise KeyError(f'model.{name} has no enabled/use switch (keys: {sorted(value.keys())})')
  model[name] = on


def set_modules(config: ml_collections.ConfigDict, modules: tuple[str, ...]) -> None:
  """Turns exactly `modules` (subset of fas/me/csa) on and the others off."""
  for name in _MODULES:
    _set_module(config.model, name, name in modules)
  if 'csa' not in modules and 'beta_temp' in config.loss:
    pass  # L_temp is reported as 0 by the loss when CSA is off.


def apply_variants(config: ml_collections.ConfigDict, variant: Optional[str]) -> ml_collections.ConfigDict:
  """Applies a comma-separated variant string (the part after `file.py:`).

  Tokens (Table 5 ablations):
    baseline | actionclip      ActionCLIP baseline: arch='actionclip', FAS/ME/CSA off
    modules=fas+me             exactly these FogNet modules on (fas, me, csa, or 'none')
    no_fas | no_me | no_csa    one module off
    b32 | b16 | l14 | l14_336  backbone ViT-B/32, B/16, L/14, L/14@336
    rn50 | rn101 | rn50x4      backbone RN50, RN101, RN50x4 (OpenAI .pt weights: set
                               model.init_from to the downloaded file, default ./RN50.pt etc.)
    frames=4 | frames4         frames per clip (train and eval)
    views=4x1 | views4x1       evaluation views = temporal clips x spatial crops
    light | dense | multi      fog intensity subset used for training and evaluation
    single_persp | persp=front train on one camera perspective (evaluation keeps all four)
    fsdp                       shard parameters and optimizer state
    bf16                       bfloat16 compute (fp32 parameters)
    remat                      rematerialise transformer blocks
  """
  if not variant:
    return config
  for token in [t.strip() for t in variant.split(',') if t.strip()]:
    key, _, value = token.partition('=')
    key = key.lower()
    if key in ('baseline', 'actionclip'):
      config.model.arch = 'actionclip'
      set_modules(config, ())
    elif key == 'modules':
      mods = () if value in ('', 'none') else tuple(value.lower().split('+'))
      bad = [m for m in mods if m not in _MODULES]
      if bad:
        raise ValueError(f'variant {token!r}: unknown module(s) {bad}; use {"+".join(_MODULES)}')
      set_modules(config, mods)
    elif key in ('no_fas', 'no_me', 'no_csa'):
      _set_module(config.model, key[3:], False)
    elif key in BACKBONE_ALIASES:
      config.model.backbone = BACKBONE_ALIASES[key]
      if config.model.get('init_from'):
        config.model.init_from = pretrained_name(config.model.backbone)
    elif key.startswith('frames'):
      n = value or key[len('frames'):]
      config.data.num_frames = int(n)
    elif key.startswith('views'):
      v = (value or key[len('views'):]).lower()
      clips, _, crops = v.partition('x')
      config.data.num_clips, config.data.num_crops = int(clips), int(crops or 1)
    elif key in ('light', 'dense'):
      config.data.fog = key
    elif key == 'multi':
      config.data.fog = None
    elif key in ('single_persp', 'persp'):
      config.data.perspective = value or 'front'
    elif key == 'fsdp':
      config.mesh.fsdp = True
    elif key == 'bf16':
      config.model.dtype = 'bfloat16'
    elif key == 'remat':
      config.model.remat = True
    else:
      raise ValueError(f'unknown config variant token {token!r} in {variant!r}; see '
                       'fognet_jax.config_lib.apply_variants for the list')
  return config


_PRETRAINED = {
    'ViT-B/32': 'openai/clip-vit-base-patch32',
    'ViT-B/16': 'openai/clip-vit-base-patch16',
    'ViT-L/14': 'openai/clip-vit-large-patch14',
    'ViT-L/14@336': 'openai/clip-vit-large-patch14-336',
    # OpenAI publishes its ResNet CLIPs only as TorchScript .pt files (no Hugging Face
    # checkpoints): the default is the file OpenAI names, in the working directory.
    'RN50': './RN50.pt',
    'RN101': './RN101.pt',
    'RN50x4': './RN50x4.pt',
}


def pretrained_name(backbone: str) -> Optional[str]:
  """Hub name of the OpenAI CLIP weights for a backbone (a local path works as well)."""
  return _PRETRAINED.get(backbone)


# --------------------------------------------------------------------------------- validation

class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _known_backbones() -> tuple[str, ...]:
  from fognet_jax.models import clip  # pylint: disable=g-import-not-at-top
  return tuple(clip.CONFIGS)


def validate(config: ml_collections.ConfigDict, *, num_devices: Optional[int] = None,
             num_processes: int = 1) -> None:
  """Raises ConfigError naming the key of the first impossible value; cheap, no I/O but stat."""
  def fail(key, msg):
    raise ConfigError(f'config.{key}: {msg}')

  for block in ('data', 'model', 'loss', 'train', 'eval', 'mesh'):
    if block not in config:
      fail(block, 'missing block')
  t, d, m, e = config.train, config.data, config.model, config.eval
  if int(d.num_frames) < 1:
    fail('data.num_frames', f'must be >= 1, got {d.num_frames}')
  if int(d.image_size) < 8:
    fail('data.image_size', f'must be >= 8, got {d.image_size}')
  for key in ('num_clips', 'num_crops'):
    if key in d and int(d[key]) < 1:
      fail(f'data.{key}', f'must be >= 1, got {d[key]}')
  if m.backbone not in _known_backbones():
    fail('model.backbone', f'unknown backbone {m.backbone!r}; known: {list(_known_backbones())}')
  if str(m.get('dtype', 'float32')) not in ('float32', 'bfloat16', 'float16'):
    fail('model.dtype', f"must be 'float32', 'bfloat16' or 'float16', got {m.dtype!r}")
  if t.grad_accum_steps < 1:
    fail('train.grad_accum_steps', f'must be >= 1, got {t.grad_accum_steps}')
  if t.batch_size < 1:
    fail('train.batch_size', f'must be >= 1, got {t.batch_size}')
  if num_devices is not None:
    unit = num_devices * t.grad_accum_steps
    if t.batch_size % unit:
      fail('train.batch_size', f'{t.batch_size} is not divisible by devices ({num_devices}) x '
           f'train.grad_accum_steps ({t.grad_accum_steps}) = {unit}')
    if e.batch_size % num_devices:
      fail('eval.batch_size', f'{e.batch_size} is not divisible by the device count {num_devices}')
  if t.batch_size % num_processes:
    fail('train.batch_size', f'{t.batch_size} not divisible by the process count {num_processes}')
  if t.num_train_steps <= 0 and t.num_epochs <= 0:
    fail('train.num_epochs', 'set train.num_epochs > 0 or train.num_train_steps > 0')
  if t.learning_rate <= 0:
    fail('train.learning_rate', f'must be > 0, got {t.learning_rate}')
  if t.warmup_epochs < 0:
    fail('train.warmup_epochs', f'must be >= 0, got {t.warmup_epochs}')
  if t.log_every_steps < 1:
    fail('train.log_every_steps', 'must be >= 1')
  if t.checkpoint_every_steps < 1:
    fail('train.checkpoint_every_steps', 'must be >= 1')
  if t.keep_checkpoints < 1:
    fail('train.keep_checkpoints', 'must be >= 1')
  if e.batch_size < 1:
    fail('eval.batch_size', f'must be >= 1, got {e.batch_size}')
  from fognet_jax import prompts  # pylint: disable=g-import-not-at-top
  for key, n in (('train.num_templates', t.get('num_templates', -1)),
                 ('eval.num_templates', e.get('num_templates', -1))):
    if n != -1 and not 1 <= n <= len(prompts.TEMPLATES):
      fail(key, f'must be -1 (all) or 1..{len(prompts.TEMPLATES)}, got {n}')
  if not d.get('dataset'):
    fail('data.dataset', 'no dataset given')
  manual_dir = d.get('manual_dir')
  if manual_dir and not os.path.isdir(os.path.expanduser(str(manual_dir))):
    fail('data.manual_dir', f'directory {manual_dir!r} does not exist')
  data_dir = d.get('data_dir')
  if data_dir and os.path.exists(str(data_dir)) and not os.path.isdir(str(data_dir)):
    fail('data.data_dir', f'{data_dir!r} is not a directory')
  init_from = m.get('init_from')
  if init_from and (str(init_from).startswith(('/', '.', '~')) and
                    not os.path.exists(os.path.expanduser(str(init_from)))):
    hint = ''
    if str(init_from).endswith('.pt'):
      hint = ('; OpenAI CLIP .pt files are downloaded from the URLs in OpenAI\'s clip package '
              '(clip/clip.py, _MODELS); set model.init_from to the file')
    fail('model.init_from', f'path {init_from!r} does not exist{hint}')
