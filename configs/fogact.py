r"""FogNet on FogAct: the paper's recipe (section 5.1), every key of it, and its Table 5 ablations.

CLIP ViT-B/16 initialised from the OpenAI weights (`model.init_from`: a hub name or a local
directory / .pt file), 8 frames at 224x224, batch 128, 30 epochs, AdamW at 5e-5 with a 5-epoch
linear warm-up and cosine annealing, lambda=0.4, beta=0.1, one 1x1 view at test time.

  python -m fognet_jax.main --config=configs/fogact.py --workdir=runs/fogact \
      --config.data.manual_dir=/data/FogAct

Ablations: comma-separated tokens after the colon, read by `apply_variant` below.
  --config=configs/fogact.py:baseline            ActionCLIP baseline (Table 5a, first row)
  --config=configs/fogact.py:modules=fas+me      other Table 5a rows (fas, me, csa, none)
  --config=configs/fogact.py:b32                 Table 5d backbones (b32 | b16 | l14 | rn50)
  --config=configs/fogact.py:frames=4,views=4x1  Table 5e
  --config=configs/fogact.py:dense               Table 5f (light | dense | multi)
  --config=configs/fogact.py:single_persp        Table 5c

The other recipes start from this one: configs/ucf101_fog.py, hmdb51_fog.py and
kinetics100_fog.py change the dataset; configs/synthetic.py changes what a small model trained
from scratch on CPU needs. Every key is checked at start-up by `fognet_jax.config_lib.validate`.

Config files import only ml_collections, the standard library and each other (by path:
`configs/` is a directory of files, not a package), so that reading a recipe costs nothing.
"""

import ml_collections
from ml_collections.config_dict import placeholder

# The OpenAI CLIP weights of each backbone: a Hugging Face hub name, or for the ResNets (which
# OpenAI publishes only as TorchScript .pt files) the file OpenAI names, in the working directory.
PRETRAINED_WEIGHTS = {
  'ViT-B/32': 'openai/clip-vit-base-patch32',
  'ViT-B/16': 'openai/clip-vit-base-patch16',
  'ViT-L/14': 'openai/clip-vit-large-patch14',
  'ViT-L/14@336': 'openai/clip-vit-large-patch14-336',
  'RN50': './RN50.pt',
  'RN101': './RN101.pt',
  'RN50x4': './RN50x4.pt',
}

# CLIPConfig fields a randomly initialised model may override (`model.clip_overrides`).
CLIP_OVERRIDE_KEYS = (
  'embed_dim',
  'image_size',
  'patch_size',
  'vision_width',
  'vision_layers',
  'vision_heads',
  'context_length',
  'vocab_size',
  'text_width',
  'text_layers',
  'text_heads',
)


def get_config(arg=None):
  """The paper's recipe on FogAct, modified by the variant tokens in `arg`."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # everything random derives from it

  # ---------------------------------------------------------------------------------- data
  # Paired clean/foggy clips from a tfds_fogact builder (docs/data.md).
  d = config.data = ml_collections.ConfigDict()
  d.dataset = 'fogact'  # TFDS name, optionally 'name/builder_config'
  d.data_dir = placeholder(str)  # None: the TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)
  d.manual_dir = placeholder(str)  # the downloaded videos of a manual-download dataset
  d.build_if_missing = True  # build the dataset on first use (generated ones need no files)
  d.train_split = 'train'
  d.eval_split = 'test'  # the split evaluation reads (one stream: eval.stream)
  d.num_frames = 8  # frames per clip, train and test (TSN segments)
  d.image_size = 224
  d.num_clips = 1  # test views: temporal clips ...
  d.num_crops = 1  # ... x spatial crops (1 centre; 3 left / centre / right)
  # Training subsets (Tables 5c / 5f): they filter the TRAIN split only; the test split is
  # filtered by eval_fog / eval_perspective, so every row of a table shares one test set.
  d.fog = placeholder(str)  # train on 'light' | 'dense' | None = both (Table 5f)
  d.perspective = placeholder(str)  # train on e.g. 'front' or 'front,back'; None = all four (5c)
  d.eval_fog = placeholder(str)  # test on 'light' | 'dense' | None = both
  d.eval_perspective = placeholder(str)  # test on these perspectives; None = all four
  # Volume control (Tables 5c / 5f): repeat a filtered training split up to the size of the
  # unfiltered one (same epochs, same steps, same warm-up as the full set).
  d.replicate_to_full = False
  # Table 5b "clean + sim.": None = the real foggy stream; 'homogeneous' = replace it by
  # homogeneous ASM fog of the clean frames (the usual way of simulating fog), at the
  # example's own fog level, drawn per training sample (tfds_fogact.fog.apply_fog).
  d.train_sim_fog = placeholder(str)
  # ActionCLIP's augmentation, one draw per pair applied to both streams.
  a = d.augment = ml_collections.ConfigDict()
  a.enabled = True
  a.scales = (1.0, 0.875, 0.75, 0.66)  # multi-scale crop: side / short side
  a.max_distort = 1  # aspect distortion, in scale steps
  a.flip = True
  # Classes a horizontal flip turns into each other ('sidestep_left:sidestep_right,...'; ids
  # '4:5' also work): 'auto' = the builder's MIRROR_CLASS_PAIRS, '' = none.
  a.flip_swap = 'auto'
  a.color_jitter_prob = 0.8
  a.brightness = 0.4
  a.contrast = 0.4
  a.saturation = 0.2
  a.hue = 0.1
  a.grayscale_prob = 0.2

  # --------------------------------------------------------------------------------- model
  # docs/model.md: the CLIP towers, FAS, ME, CSA and the ActionCLIP baseline.
  m = config.model = ml_collections.ConfigDict()
  m.arch = 'fognet'  # 'fognet' (two streams) | 'actionclip' (the baseline)
  m.backbone = 'ViT-B/16'  # a CLIP config name (fognet_jax.models.clip.CONFIGS)
  # None: random initialisation; else an OpenAI .pt file, a Hugging Face directory, an Orbax
  # directory written by clip_weights.save, or a hub name (the config then comes from it).
  # Typed `object`, like clip_overrides below: `--config.model.init_from=None` gives None.
  m.init_from = ml_collections.FieldReference(PRETRAINED_WEIGHTS['ViT-B/16'], field_type=object)
  m.dtype = 'bfloat16'  # compute dtype; parameters and losses stay float32
  m.remat = False  # rematerialise the tower blocks in the backward pass
  # CLIPConfig fields replacing the backbone's (random initialisation only); None = keep.
  m.clip_overrides = ml_collections.ConfigDict({k: placeholder(object) for k in CLIP_OVERRIDE_KEYS})
  # Fog-Aware Selection (eqs. 1-2): self-attention over the clean and foggy frame embeddings
  # joined by `concat`: 'channels' (T tokens of width 2D: both streams weigh the frames, each
  # stream keeps its own; eq. 1's sums run to T as written, and the foggy output, like the
  # foggy-only test, holds foggy frames only) or 'tokens' (2T tokens; foggy outputs mix in
  # clean frames, which the foggy-only test does not have; docs/model.md). `temperature`
  # only with `parameter_free`; `init_scale` scales the out projection's init (the residual
  # branch starts small).
  m.fas = ml_collections.ConfigDict(
    dict(
      enabled=True,
      parameter_free=False,
      num_heads=8,
      temperature=1.0,
      init_scale=0.1,
      concat='channels',
    )
  )
  # Mutual Enhancement (eqs. 3-5); `init_scale` scales the init of Wv.
  m.me = ml_collections.ConfigDict(
    dict(enabled=True, shared_weights=True, num_heads=1, init_scale=0.1)
  )
  m.csa = ml_collections.ConfigDict(dict(enabled=True))  # Cross-Stream Alignment, L_temp (eq. 7)
  m.temporal_fusion = 'mean'  # 'mean' | 'transformer' (ActionCLIP's)
  m.temporal_layers = 6  # the temporal transformer (ActionCLIP: 6 layers)
  m.temporal_heads = placeholder(int)  # None = embed_dim // 64, at least 1
  m.max_frames = 32  # its positional embeddings
  m.train_stream = 'foggy'  # baseline only: 'foggy' | 'clean' | 'clean+foggy'
  # 'clip': CLIP's BPE, vocabulary files at `path` (a checkpoint directory with vocab.json +
  # merges.txt or tokenizer.json, or OpenAI's bpe_simple_vocab_16e6.txt.gz); 'byte': no files.
  m.tokenizer = ml_collections.ConfigDict(dict(kind='clip', path=placeholder(str)))
  # Subtract each clip's mean frame before the image tower (the clip alone: the foggy one at
  # inference). Not in the paper; for small towers trained from scratch on little data.
  m.frame_centering = False

  # ---------------------------------------------------------------------------------- loss
  # eq. 11: L = L_f + λ L_c + β L_temp, with L_f / L_c the multi-positive InfoNCE of eqs. 8-10.
  lo = config.loss = ml_collections.ConfigDict()
  # The video-text term: 'fognet' = the multi-positive InfoNCE of eqs. 8-10 (one prompt per
  # class, C-way softmax); 'actionclip_kl' = ActionCLIP's loss (one prompt template drawn per
  # sample, softmax of the B x B video-text similarities in both directions, KL divergence
  # to the row-normalised same-label matrix, the two directions averaged). The baseline
  # variant sets 'actionclip_kl'.
  lo.kind = 'fognet'
  lo.lambda_clean = 0.4  # λ
  lo.beta_temp = 0.1  # β (used when model.csa.enabled and the model is two-stream)
  # τ of L_temp's frame cosines (eq. 7 has none, i.e. 1; cosines in [-1, 1] at τ = 1 give an
  # almost flat softmax, so CLIP's initial 0.07 is the default).
  lo.temp_temperature = 0.07
  lo.max_logit_scale = 100.0  # exp(logit_scale) is clipped here (OpenAI CLIP)

  # --------------------------------------------------------------------------------- train
  t = config.train = ml_collections.ConfigDict()
  t.batch_size = 128  # global clip pairs per optimizer step (all hosts and devices)
  t.num_epochs = 30.0  # used when num_train_steps <= 0
  t.num_train_steps = -1  # > 0 overrides num_epochs
  t.learning_rate = 5e-5  # AdamW peak
  t.warmup_epochs = 5.0  # linear warm-up, then cosine annealing to end_lr_ratio x peak
  t.end_lr_ratio = 0.0
  t.weight_decay = 0.2  # AdamW, decoupled; none on biases, norms and scalars
  t.b1 = 0.9
  t.b2 = 0.98
  t.eps = 1e-8
  t.grad_clip_norm = 0.0  # > 0: clip the global gradient norm
  t.grad_accum_steps = 1  # micro-batches per step; batch_size stays the effective batch
  t.freeze_text = False  # True: the text tower gets no gradient and no update
  t.freeze_text_pattern = r'(^|/)text(/|$)'  # parameter paths of the text tower
  # The temporal fusion module's learning rate as a multiple of learning_rate (ActionCLIP's
  # f_ratio: 10 for its transformer fusion; the `fusion=transformer` variant sets it).
  t.fusion_lr_ratio = 1.0
  t.fusion_pattern = r'(^|/)temporal(/|$)'  # parameter paths of the fusion module
  t.num_templates = -1  # prompt templates drawn from: the first N of 16; -1 = all
  t.log_every_steps = 50
  t.checkpoint_every_steps = 500
  t.keep_checkpoints = 3

  # ---------------------------------------------------------------------------------- eval
  e = config.eval = ml_collections.ConfigDict()
  e.batch_size = 32  # global videos per batch, each with all its views
  e.stream = 'foggy'  # the test stream: 'foggy' | 'clean' (Table 5b "clean -> clean")
  e.num_templates = -1  # prompt templates averaged at test time; -1 = all
  e.confusion_matrix = True  # confusion_matrix.png (paper Figure 7)

  # ----------------------------------------------------------------------- mesh, processes
  config.mesh = ml_collections.ConfigDict()
  config.mesh.fsdp = False  # shard parameters and AdamW moments over the data axis
  config.mesh.num_devices = -1  # -1 = all devices of all processes
  # 'auto': jax.distributed.initialize() when the environment describes a multi-process job
  # (TPU pod slices, SLURM, JAX_COORDINATOR_ADDRESS); True: always; False: never.
  config.distributed = ml_collections.ConfigDict(dict(initialize='auto'))

  # ---------------------------------------------------------------------------------- perf
  # How a run computes, not what it learns: speed and memory options that leave its results
  # the same up to floating-point rounding (docs/training.md, "Performance options").
  p = config.perf = ml_collections.ConfigDict()
  # Send uint8 frames and each pair's colour jitter as affine maps; the jitter and CLIP
  # normalisation run in the jitted step (fognet_jax.pixels). False: float32 from the host.
  p.pixels_on_device = True
  # The input pipeline's workers: 'thread' or 'process' (spawned workers: no GIL between
  # them, seconds to start, ~300 MB each, frames back through /dev/shm; see docs/data.md)
  p.worker_type = 'thread'
  p.num_workers = 4  # decoding workers per process
  p.prefetch = 2  # batches prepared ahead
  p.attention_impl = placeholder(str)  # CLIP's attention: None / 'xla' (einsum) | 'cudnn' (GPU)
  # The CLIP transformers' residual stream between blocks: None (float32) | model.dtype
  # (16-bit activations throughout; opt-in until measured on a GPU, see docs/clip.md)
  p.residual_dtype = placeholder(str)
  p.fsdp_min_size = 2**14  # with mesh.fsdp: arrays with fewer elements stay replicated
  p.async_checkpointing = True  # write checkpoints in a background thread

  return apply_variant(config, arg)


_MODULES = ('fas', 'me', 'csa')
_BACKBONES = {
  'b32': 'ViT-B/32',
  'b16': 'ViT-B/16',
  'l14': 'ViT-L/14',
  'l14_336': 'ViT-L/14@336',
  'rn50': 'RN50',
  'rn101': 'RN101',
  'rn50x4': 'RN50x4',
  'tiny': 'tiny',
}


def apply_variant(config, arg):
  """Applies the comma-separated tokens of `arg` (the part after `file.py:`) to `config`.

  baseline | actionclip      ActionCLIP baseline: arch='actionclip', FAS/ME/CSA off,
                             ActionCLIP's KL loss (loss.kind='actionclip_kl')
  fognet_loss | kl_loss      loss.kind 'fognet' (eqs. 8-10) | 'actionclip_kl'
  train=clean|foggy|clean+foggy   the baseline's training stream (model.train_stream)
  test=clean | test=foggy    the test stream (eval.stream)
  sim_fog                    train on homogeneous ASM fog of the clean stream (Table 5b)
  modules=fas+me             exactly these FogNet modules on (fas, me, csa, or 'none')
  fusion=transformer         ActionCLIP's temporal transformer (model.temporal_fusion) at 10x
                             the learning rate (train.fusion_lr_ratio, ActionCLIP's f_ratio)
  fusion=mean                mean over frames (the default)
  fas=channels | fas=tokens  what FAS's [v_c ; v_f] concatenates (model.fas.concat;
                             default channels)
  no_fas | no_me | no_csa    one module off
  b32 | b16 | l14 | l14_336  backbone ViT-B/32, B/16, L/14, L/14@336 (with its OpenAI weights
  rn50 | rn101 | rn50x4      when init_from is set; ResNets: OpenAI's .pt file, default ./RN50.pt)
  frames=4 | frames4         frames per clip (train and test)
  views=4x1 | views4x1       test views = temporal clips x spatial crops
  light | dense | multi      fog intensity used for training (the test set keeps both)
  single_persp | persp=front train on one camera perspective (tested on all four)
  replicate                  repeat a filtered training set up to the full set's size
  fsdp                       shard parameters and optimizer state
  bf16                       bfloat16 compute (float32 parameters)
  remat                      rematerialise transformer blocks
  """
  for token in [t.strip() for t in (arg or '').split(',') if t.strip()]:
    key, _, value = token.partition('=')
    key = key.lower()
    if key in ('baseline', 'actionclip'):
      config.model.arch = 'actionclip'
      config.loss.kind = 'actionclip_kl'
      _set_modules(config, ())
    elif key in ('fognet_loss', 'kl_loss'):
      config.loss.kind = 'fognet' if key == 'fognet_loss' else 'actionclip_kl'
    elif key == 'train':
      config.model.train_stream = value
    elif key == 'test':
      config.eval.stream = value
    elif key == 'sim_fog':
      config.data.train_sim_fog = value or 'homogeneous'
    elif key == 'replicate':
      config.data.replicate_to_full = True
    elif key == 'modules':
      mods = () if value in ('', 'none') else tuple(value.lower().split('+'))
      bad = [x for x in mods if x not in _MODULES]
      if bad:
        raise ValueError(f'variant {token!r}: unknown module(s) {bad}; use {"+".join(_MODULES)}')
      _set_modules(config, mods)
    elif key == 'fas':
      config.model.fas.concat = value
    elif key == 'fusion':
      config.model.temporal_fusion = value
      config.train.fusion_lr_ratio = 10.0 if value == 'transformer' else 1.0
    elif key in ('no_fas', 'no_me', 'no_csa'):
      config.model[key[3:]].enabled = False
    elif key in _BACKBONES:
      config.model.backbone = _BACKBONES[key]
      if config.model.init_from:
        config.model.init_from = PRETRAINED_WEIGHTS.get(config.model.backbone)
    elif key.startswith('frames'):
      config.data.num_frames = int(value or key[len('frames') :])
    elif key.startswith('views'):
      clips, _, crops = (value or key[len('views') :]).lower().partition('x')
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
      raise ValueError(
        f'unknown config variant token {token!r} in {arg!r}; see '
        'apply_variant in configs/fogact.py for the list'
      )
  return config


def _set_modules(config, modules):
  for name in _MODULES:
    config.model[name].enabled = name in modules
