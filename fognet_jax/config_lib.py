"""Config files and their start-up validation.

A recipe is one file in `configs/` with `get_config(arg)` returning the whole `ConfigDict`
(`configs/fogact.py` spells out every key; the other files start from it). Config files import
only ml_collections and the standard library; this module holds what needs the package:

  load_config          'configs/fogact.py:baseline' -> ConfigDict (tools and tests)
  upgrade_saved_config a run's config.json in today's layout (the `perf` block)
  validate             one check per config block, run once at start-up before any data or
                       model work; a `ConfigError` names the key of the first impossible value
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from typing import Any
from typing import Optional

import ml_collections

from fognet_jax import augment
from fognet_jax import input_pipeline
from fognet_jax import prompts
from fognet_jax import records
from fognet_jax.models import blocks
from fognet_jax.models import clip

# The repository's config directory (relative config names resolve here).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')

ARCHS = ('fognet', 'actionclip')
FUSIONS = ('mean', 'transformer')
TRAIN_STREAMS = ('foggy', 'clean', 'clean+foggy')
LOSS_KINDS = ('fognet', 'actionclip_kl')
DTYPES = ('float32', 'bfloat16', 'float16')
ATTENTION_IMPLS = (None, 'xla', 'cudnn')


# ------------------------------------------------------------------------------ config files


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'fogact', 'configs/synthetic.py:baseline' or '/path/file.py:arg' -> its ConfigDict.

  A bare name or a relative path that does not exist resolves in the repository's configs/.
  """
  path, _, arg = spec.partition(':')
  if not path.endswith('.py'):
    path += '.py'
  if not os.path.isfile(path):
    path = os.path.join(CONFIG_DIR, os.path.basename(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  name = 'fognet_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# The keys of the `perf` block, each with the place a config.json written before the block
# existed holds it, and the behaviour of a run whose config.json lacks it.
PERF_KEYS: dict[str, tuple[tuple[str, str], Any]] = {
  'pixels_on_device': (('data', 'pixels_on_device'), False),
  'worker_type': (('data', 'worker_type'), 'thread'),
  'num_workers': (('data', 'num_workers'), 4),
  'prefetch': (('data', 'prefetch'), 2),
  'attention_impl': (('model', 'attention_impl'), None),
  'residual_dtype': (('model', 'residual_dtype'), None),
  'fsdp_min_size': (('mesh', 'fsdp_min_size'), 2**14),
  'async_checkpointing': (('train', 'async_checkpointing'), True),
}


def upgrade_saved_config(saved: dict) -> dict:
  """A run's config.json (as a dict) with a `perf` block: keys of `PERF_KEYS` found at their
  older places move there, missing ones get the behaviour the run had without them."""
  config = copy.deepcopy(saved)
  perf = config.setdefault('perf', {})
  for key, ((block, old), default) in PERF_KEYS.items():
    held = config.get(block)
    value = held.pop(old, default) if isinstance(held, dict) else default
    perf.setdefault(key, value)
  return config


# --------------------------------------------------------------------------------- validation


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _fail(key: str, msg: str):
  raise ConfigError(f'config.{key}: {msg}')


def _positive_ints(block: ml_collections.ConfigDict, name: str, keys, minimum: int = 1) -> None:
  for key in keys:
    v = block.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
      _fail(f'{name}.{key}', f'must be an integer >= {minimum}, got {v!r}')


def _existing_path(key: str, path: Optional[str], *, directory: bool, hint: str = '') -> None:
  if path and not (os.path.isdir if directory else os.path.exists)(os.path.expanduser(str(path))):
    _fail(key, f'{"directory" if directory else "path"} {path!r} does not exist{hint}')


def validate_data(d: ml_collections.ConfigDict) -> None:
  _positive_ints(d, 'data', ('num_frames', 'num_clips', 'num_crops'))
  _positive_ints(d, 'data', ('image_size',), minimum=8)
  if not d.get('dataset'):
    _fail('data.dataset', 'no dataset given')
  for key in ('train_split', 'eval_split'):
    if not d.get(key):
      _fail(f'data.{key}', 'no split given')
  _existing_path('data.manual_dir', d.get('manual_dir'), directory=True)
  data_dir = d.get('data_dir')
  if data_dir and os.path.exists(str(data_dir)) and not os.path.isdir(str(data_dir)):
    _fail('data.data_dir', f'{data_dir!r} is not a directory')
  try:
    for role in records.ROLES:
      records.fog_filter(d, role)
      records.perspective_filter(d, role)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if not isinstance(d.get('replicate_to_full', False), bool):
    _fail('data.replicate_to_full', f'must be True or False, got {d.replicate_to_full!r}')
  if d.get('train_sim_fog') not in augment.SIM_FOG:
    _fail('data.train_sim_fog', f"must be None or 'homogeneous', got {d.train_sim_fog!r}")
  a = d.augment
  if not a.enabled:
    return
  scales = tuple(a.scales)
  if not scales or any(not 0 < s <= 1 for s in scales):
    _fail('data.augment.scales', f'must be in (0, 1], got {scales}')
  for key in ('color_jitter_prob', 'grayscale_prob'):
    if not 0 <= a[key] <= 1:
      _fail(f'data.augment.{key}', f'must be in [0, 1], got {a[key]}')
  for key in ('brightness', 'contrast', 'saturation'):
    if not 0 <= a[key] < 1:
      _fail(f'data.augment.{key}', f'must be in [0, 1), got {a[key]}')
  if not 0 <= a.hue <= 0.5:
    _fail('data.augment.hue', f'must be in [0, 0.5], got {a.hue}')
  if a.flip_swap not in ('auto', '', None):
    bad = [x for x in str(a.flip_swap).split(',') if x.count(':') != 1]
    if bad:
      _fail('data.augment.flip_swap', f"{bad} are not 'class_a:class_b' pairs")


def validate_model(m: ml_collections.ConfigDict) -> None:
  if m.arch not in ARCHS:
    _fail('model.arch', f'must be one of {ARCHS}, got {m.arch!r}')
  if m.backbone not in clip.CONFIGS:
    _fail('model.backbone', f'unknown backbone {m.backbone!r}; known: {sorted(clip.CONFIGS)}')
  if m.dtype not in DTYPES:
    _fail('model.dtype', f"must be 'float32', 'bfloat16' or 'float16', got {m.dtype!r}")
  if m.temporal_fusion not in FUSIONS:
    _fail('model.temporal_fusion', f'must be one of {FUSIONS}, got {m.temporal_fusion!r}')
  if m.train_stream not in TRAIN_STREAMS:
    _fail('model.train_stream', f'must be one of {TRAIN_STREAMS}, got {m.train_stream!r}')
  for name in ('fas', 'me', 'csa'):
    if 'enabled' not in m[name]:
      _fail(f'model.{name}.enabled', 'missing')
  if m.fas.temperature <= 0:
    _fail('model.fas.temperature', f'must be > 0, got {m.fas.temperature}')
  _positive_ints(m.fas, 'model.fas', ('num_heads',))
  if m.fas.get('concat', 'tokens') not in blocks.FAS_CONCAT:
    _fail('model.fas.concat', f'must be one of {blocks.FAS_CONCAT}, got {m.fas.concat!r}')
  _positive_ints(m.me, 'model.me', ('num_heads',))
  _positive_ints(m, 'model', ('max_frames',))
  _positive_ints(m, 'model', ('temporal_layers',), minimum=0)
  overrides = {k: v for k, v in m.clip_overrides.items() if v is not None}
  fields = [f.name for f in dataclasses.fields(clip.CLIPConfig)]
  unknown = sorted(set(m.clip_overrides) - set(fields))
  if unknown:
    _fail('model.clip_overrides', f'unknown CLIPConfig field(s) {unknown}; known: {fields}')
  # The overrides and init_from take any type, so that None can be given on the command line.
  _positive_ints(m.clip_overrides, 'model.clip_overrides', sorted(overrides))
  if m.init_from is not None and not isinstance(m.init_from, str):
    _fail('model.init_from', f'must be a path, a hub name or None, got {m.init_from!r}')
  if m.init_from and overrides:
    raise ConfigError(
      f'config.model.clip_overrides {sorted(overrides)} cannot be combined '
      f'with model.init_from={m.init_from!r}'
    )
  init_from = m.init_from
  if init_from and str(init_from).startswith(('/', '.', '~')):
    hint = ''
    if str(init_from).endswith('.pt'):
      hint = (
        "; OpenAI CLIP .pt files are downloaded from the URLs in OpenAI's clip package "
        '(clip/clip.py, _MODELS); set model.init_from to the file'
      )
    _existing_path('model.init_from', init_from, directory=False, hint=hint)
  if m.tokenizer.kind not in ('clip', 'byte'):
    _fail('model.tokenizer.kind', f"must be 'clip' or 'byte', got {m.tokenizer.kind!r}")
  _existing_path('model.tokenizer.path', m.tokenizer.path, directory=False)


def validate_loss(lo: ml_collections.ConfigDict) -> None:
  if lo.get('kind', 'fognet') not in LOSS_KINDS:
    _fail('loss.kind', f'must be one of {LOSS_KINDS}, got {lo.kind!r}')
  for key in ('lambda_clean', 'beta_temp'):
    if lo[key] < 0:
      _fail(f'loss.{key}', f'must be >= 0, got {lo[key]}')
  for key in ('temp_temperature', 'max_logit_scale'):
    if lo[key] <= 0:
      _fail(f'loss.{key}', f'must be > 0, got {lo[key]}')


def validate_train(
  t: ml_collections.ConfigDict, *, num_devices: Optional[int], num_processes: int
) -> None:
  _positive_ints(
    t,
    'train',
    (
      'batch_size',
      'grad_accum_steps',
      'log_every_steps',
      'checkpoint_every_steps',
      'keep_checkpoints',
    ),
  )
  if num_devices is not None:
    unit = num_devices * t.grad_accum_steps
    if t.batch_size % unit:
      _fail(
        'train.batch_size',
        f'{t.batch_size} is not divisible by devices ({num_devices}) x '
        f'train.grad_accum_steps ({t.grad_accum_steps}) = {unit}',
      )
  if t.batch_size % num_processes:
    _fail('train.batch_size', f'{t.batch_size} not divisible by the process count {num_processes}')
  if t.num_train_steps <= 0 and t.num_epochs <= 0:
    _fail('train.num_epochs', 'set train.num_epochs > 0 or train.num_train_steps > 0')
  if t.learning_rate <= 0:
    _fail('train.learning_rate', f'must be > 0, got {t.learning_rate}')
  if t.warmup_epochs < 0:
    _fail('train.warmup_epochs', f'must be >= 0, got {t.warmup_epochs}')
  _check_templates('train.num_templates', t.num_templates)


def validate_eval(e: ml_collections.ConfigDict, *, num_devices: Optional[int]) -> None:
  _positive_ints(e, 'eval', ('batch_size',))
  if e.get('stream', 'foggy') not in augment.STREAMS:
    _fail('eval.stream', f'must be one of {augment.STREAMS}, got {e.stream!r}')
  if num_devices is not None and e.batch_size % num_devices:
    _fail('eval.batch_size', f'{e.batch_size} is not divisible by the device count {num_devices}')
  _check_templates('eval.num_templates', e.num_templates)


def _check_templates(key: str, n: int) -> None:
  if n != -1 and not 1 <= n <= len(prompts.TEMPLATES):
    _fail(key, f'must be -1 (all) or 1..{len(prompts.TEMPLATES)}, got {n}')


def validate_mesh(mesh: ml_collections.ConfigDict) -> None:
  if mesh.num_devices != -1:
    _positive_ints(mesh, 'mesh', ('num_devices',))


def validate_perf(perf: ml_collections.ConfigDict, *, dtype: str) -> None:
  """The `perf` block; `dtype` is model.dtype, the one 16-bit residual stream allowed."""
  for key in ('pixels_on_device', 'async_checkpointing'):
    if not isinstance(perf[key], bool):
      _fail(f'perf.{key}', f'must be True or False, got {perf[key]!r}')
  if perf.attention_impl not in ATTENTION_IMPLS:
    _fail('perf.attention_impl', f"must be None, 'xla' or 'cudnn', got {perf.attention_impl!r}")
  if perf.residual_dtype not in (None, 'float32', dtype):
    _fail(
      'perf.residual_dtype',
      f"must be None, 'float32' or model.dtype ({dtype!r}), got {perf.residual_dtype!r}",
    )
  _positive_ints(perf, 'perf', ('fsdp_min_size', 'prefetch'), minimum=0)
  _positive_ints(perf, 'perf', ('num_workers',))
  if perf.worker_type not in input_pipeline.WORKER_TYPES:
    _fail(
      'perf.worker_type', f'must be one of {input_pipeline.WORKER_TYPES}, got {perf.worker_type!r}'
    )


def validate(
  config: ml_collections.ConfigDict, *, num_devices: Optional[int] = None, num_processes: int = 1
) -> None:
  """Checks every block; raises ConfigError naming the key of the first impossible value.

  Cheap: no I/O but `stat` of the paths the config names. `num_devices` (the mesh size) adds
  the divisibility checks of the batch sizes.
  """
  for block in ('data', 'model', 'loss', 'train', 'eval', 'mesh', 'perf'):
    if block not in config:
      _fail(block, 'missing block')
  validate_data(config.data)
  validate_model(config.model)
  validate_loss(config.loss)
  validate_train(config.train, num_devices=num_devices, num_processes=num_processes)
  validate_eval(config.eval, num_devices=num_devices)
  validate_mesh(config.mesh)
  validate_perf(config.perf, dtype=config.model.dtype)
