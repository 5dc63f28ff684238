"""Config files, variants, overrides and start-up validation."""

import glob
import importlib.util
import os
import subprocess
import sys

import config_testutil
import pytest
from absl import flags

from fognet_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ['fogact', 'ucf101_fog', 'hmdb51_fog', 'kinetics100_fog', 'synthetic']


_parse = config_testutil.parse


@pytest.mark.parametrize('name', FILES)
def test_config_files_load_and_validate(name):
  cfg = _parse(f'--config={ROOT}/configs/{name}.py')
  for block in ('data', 'model', 'loss', 'train', 'eval', 'mesh'):
    assert block in cfg
  config_lib.validate(cfg, num_devices=8)


# Loads a config file as ml_collections' --config flag does (by path, with a variant), and
# prints the top-level names of the modules it imported beyond the standard library and those
# that ml_collections itself imports.
_IMPORTS_OF_A_CONFIG = """
import importlib.util, sys
import ml_collections
before = set(sys.modules)
path, arg = sys.argv[1], sys.argv[2] or None
spec = importlib.util.spec_from_file_location('config_under_test', path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert isinstance(module.get_config(arg), ml_collections.ConfigDict)
new = {name.split('.')[0] for name in set(sys.modules) - before}
print(' '.join(sorted(new - set(sys.stdlib_module_names) - {'ml_collections'})))
"""


@pytest.mark.parametrize(
  'path', sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))), ids=os.path.basename
)
def test_config_files_import_only_ml_collections_and_each_other(path):
  out = subprocess.run(
    [sys.executable, '-c', _IMPORTS_OF_A_CONFIG, path, 'baseline'],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
    env={**os.environ, 'PYTHONPATH': ROOT},
  ).stdout.split()
  assert out == []


def test_paper_setting():
  cfg = _parse(f'--config={ROOT}/configs/fogact.py')
  assert cfg.model.backbone == 'ViT-B/16' and cfg.model.init_from == 'openai/clip-vit-base-patch16'
  assert (cfg.data.num_frames, cfg.data.image_size) == (8, 224)
  assert (
    cfg.train.batch_size,
    cfg.train.num_epochs,
    cfg.train.learning_rate,
    cfg.train.warmup_epochs,
  ) == (128, 30, 5e-5, 5)
  assert (cfg.loss.lambda_clean, cfg.loss.beta_temp) == (0.4, 0.1)
  assert cfg.model.fas.enabled and cfg.model.me.enabled and cfg.model.csa.enabled


def test_variants_and_overrides():
  cfg = _parse(
    f'--config={ROOT}/configs/fogact.py:b32,frames=4,views=4x1,dense,modules=fas+csa',
    '--config.train.grad_accum_steps=4',
  )
  assert cfg.model.backbone == 'ViT-B/32'
  assert cfg.model.init_from == 'openai/clip-vit-base-patch32'
  assert cfg.data.num_frames == 4 and (cfg.data.num_clips, cfg.data.num_crops) == (4, 1)
  assert cfg.data.fog == 'dense'
  assert (cfg.model.fas.enabled, cfg.model.me.enabled, cfg.model.csa.enabled) == (True, False, True)
  assert cfg.train.grad_accum_steps == 4
  base = _parse(f'--config={ROOT}/configs/fogact.py:baseline')
  assert base.model.arch == 'actionclip' and not base.model.fas.enabled
  assert cfg.model.fas.concat == 'channels'  # eq. 1 over channel-joined streams
  assert _parse(f'--config={ROOT}/configs/fogact.py:fas=tokens').model.fas.concat == 'tokens'
  single = _parse(f'--config={ROOT}/configs/fogact.py:single_persp,l14,fsdp')
  assert single.data.perspective == 'front' and single.model.backbone == 'ViT-L/14'
  assert single.mesh.fsdp


def test_resnet_backbone_variant(tmp_path):
  cfg = _parse(f'--config={ROOT}/configs/fogact.py:rn50')
  assert cfg.model.backbone == 'RN50' and cfg.model.init_from == './RN50.pt'
  # OpenAI's RN50.pt is a manual download: start-up names the key and says where to get it.
  with pytest.raises(config_lib.ConfigError, match=r'model.init_from.*RN50.pt.*_MODELS'):
    config_lib.validate(cfg, num_devices=1)
  weights = tmp_path / 'RN50.pt'
  weights.write_bytes(b'')
  cfg = _parse(f'--config={ROOT}/configs/fogact.py:rn50', f'--config.model.init_from={weights}')
  config_lib.validate(cfg, num_devices=1)


def test_unknown_variant_and_unknown_key_fail():
  with pytest.raises(flags.IllegalFlagValueError, match=r"unknown config variant token 'nonsense'"):
    _parse(f'--config={ROOT}/configs/fogact.py:nonsense')
  with pytest.raises(ValueError, match=r"unknown config variant token 'nonsense'"):
    spec = importlib.util.spec_from_file_location('fogact', f'{ROOT}/configs/fogact.py')
    fogact = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fogact)
    fogact.apply_variant(fogact.get_config(), 'b32,nonsense')
  with pytest.raises(AttributeError, match='no_such_key'):
    _parse(f'--config={ROOT}/configs/synthetic.py', '--config.train.no_such_key=1')


@pytest.mark.parametrize(
  'key,value,devices,match',
  [
    ('train.batch_size', 100, 8, 'train.batch_size'),
    ('train.grad_accum_steps', 3, 8, 'train.grad_accum_steps'),
    ('data.num_frames', 0, 1, 'data.num_frames'),
    ('model.backbone', 'ViT-H/99', 1, 'model.backbone'),
    ('data.manual_dir', '/no/such/dir', 1, 'data.manual_dir'),
    ('eval.batch_size', 12, 8, 'eval.batch_size'),
    ('train.learning_rate', -1.0, 1, 'train.learning_rate'),
    ('model.dtype', 'int8', 1, 'model.dtype'),
    ('train.num_templates', 0, 1, 'train.num_templates'),
    ('eval.num_templates', 17, 1, 'eval.num_templates'),
    ('model.fas.concat', 'frames', 1, 'model.fas.concat'),
    ('perf.residual_dtype', 'bfloat16', 1, 'perf.residual_dtype'),  # the demo runs float32
    ('perf.attention_impl', 'flash', 1, 'perf.attention_impl'),
    ('perf.fsdp_min_size', -1, 1, 'perf.fsdp_min_size'),
  ],
)
def test_validation_names_the_key(key, value, devices, match):
  cfg = _parse(f'--config={ROOT}/configs/synthetic.py')
  *blocks, name = key.split('.')
  with cfg.unlocked():
    if key == 'train.grad_accum_steps':
      cfg.train.batch_size = 32
    parent = cfg
    for block in blocks:
      parent = parent[block]
    parent[name] = value
  with pytest.raises(config_lib.ConfigError, match=match.replace('.', r'\.')):
    config_lib.validate(cfg, num_devices=devices)


def test_a_saved_config_from_before_the_perf_block_reads_with_one(tmp_path):
  import json  # pylint: disable=g-import-not-at-top

  from fognet_jax import predict  # pylint: disable=g-import-not-at-top

  today = _parse(f'--config={ROOT}/configs/synthetic.py:scratch').to_dict()
  today['perf'].update(
    pixels_on_device=False,
    fsdp_min_size=64,
    async_checkpointing=False,
    worker_type='process',
    num_workers=3,
    prefetch=5,
  )
  today = json.loads(json.dumps(today))  # as config.json holds it (lists for tuples)
  older = json.loads(json.dumps(today))
  perf = older.pop('perf')
  older['data']['pixels_on_device'] = perf['pixels_on_device']
  older['model']['attention_impl'] = perf['attention_impl']
  older['mesh']['fsdp_min_size'] = perf['fsdp_min_size']
  older['train']['async_checkpointing'] = perf['async_checkpointing']
  for key in ('worker_type', 'num_workers', 'prefetch'):
    older['data'][key] = perf[key]
  # residual_dtype is missing: the run had the float32 stream.
  (tmp_path / 'config.json').write_text(json.dumps(older))
  config = predict.load_config(str(tmp_path))
  assert json.loads(json.dumps(config.to_dict())) == today
  config_lib.validate(config, num_devices=1)
  assert config_lib.upgrade_saved_config(today) == today  # today's layout is kept as it is
  # a run from before data.worker_type and data.prefetch had thread workers, 2 batches ahead
  del older['data']['worker_type'], older['data']['prefetch']
  upgraded = config_lib.upgrade_saved_config(older)
  assert {k: upgraded['perf'][k] for k in ('worker_type', 'num_workers', 'prefetch')} == {
    'worker_type': 'thread',
    'num_workers': 3,
    'prefetch': 2,
  }
  assert not {'worker_type', 'num_workers', 'prefetch'} & set(upgraded['data'])
