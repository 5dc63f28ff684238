"""`python -m fognet_jax.export_clip`: a run's CLIP towers written as a checkpoint that
`model.init_from` loads (the clean pretraining stage's hand-over), and the committed one."""

import os

import jax
import main_testutil as U
import numpy as np
import pytest
from flax import nnx

from fognet_jax import clip_weights
from fognet_jax import config_lib
from fognet_jax import export_clip
from fognet_jax import predict
from fognet_jax import weights

ROOT = U.ROOT


def _leaves(module):
  return {
    '/'.join(map(str, p)): np.asarray(v)
    for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param))
  }


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A tiny clean 'pretraining' run (ActionCLIP on the clean stream) and its export."""
  base = tmp_path_factory.mktemp('export')
  data = U.tiny_data_args(base)
  run = str(base / 'pretrain')
  r = U.run_module(
    'fognet_jax.main',
    '--config=configs/synthetic.py:scratch,baseline,train=clean',
    f'--workdir={run}',
    '--mode=train_only',
    *data,
    *U.TINY,
  )
  assert r.returncode == 0, r.stderr[-4000:]
  out = str(base / 'clip')
  r = U.run_module('fognet_jax.export_clip', f'--workdir={run}', f'--out={out}')
  assert r.returncode == 0, r.stderr[-4000:]
  assert 'at step 3' in r.stdout
  return base, data, run, out


def test_export_holds_the_runs_trained_towers(pretrained):
  _, _, run, out = pretrained
  config = predict.load_config(run)
  from fognet_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  from fognet_jax import sharding  # pylint: disable=g-import-not-at-top

  graphdef, state = main_lib.restore_state(config, sharding.make_mesh(1), run)
  trained = nnx.merge(graphdef, state.params, state.rest).clip
  loaded = clip_weights.load(out)
  assert loaded.config == trained.config
  want, got = _leaves(trained), _leaves(loaded)
  assert set(want) == set(got)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # ... and not the random initialisation of the same architecture
  init = weights.create_model(config.model, rngs=nnx.Rngs(config.seed)).clip
  assert any(not np.array_equal(v, _leaves(init)[k]) for k, v in want.items())


def test_init_from_the_export_starts_fognet_from_it(pretrained):
  base, data, _, out = pretrained
  cfg = config_lib.load_config(os.path.join(ROOT, 'configs', 'synthetic.py'))
  with cfg.unlocked():
    cfg.model.init_from = out
  config_lib.validate_model(cfg.model)  # clip_overrides are None: the checkpoint's architecture
  model = weights.create_model(cfg.model, rngs=nnx.Rngs(0))
  want = _leaves(clip_weights.load(out))
  got = _leaves(model.clip)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # the whole recipe trains from it through main
  r = U.run_module(
    'fognet_jax.main',
    '--config=configs/synthetic.py',
    f'--workdir={base / "ft"}',
    f'--config.model.init_from={out}',
    '--config.train.num_train_steps=2',
    '--config.train.batch_size=8',
    '--config.eval.batch_size=8',
    '--config.data.num_frames=2',
    '--config.data.image_size=32',
    *data,
  )
  assert r.returncode == 0, r.stderr[-4000:]


def test_export_refuses_to_overwrite(pretrained, tmp_path):
  _, _, run, out = pretrained
  r = U.run_module('fognet_jax.export_clip', f'--workdir={run}', f'--out={out}')
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith('error: ')
  with pytest.raises(FileExistsError):
    export_clip.export(run, out)


def test_committed_pretrained_towers_load_as_the_demo_architecture():
  """configs/synthetic.py fine-tunes pretrained/synthetic_tiny_clip: it is there, loads through
  the weight loader, and is the 'tiny' architecture at 64x64 with the byte vocabulary."""
  cfg = config_lib.load_config(os.path.join(ROOT, 'configs', 'synthetic.py'))
  assert os.path.isdir(cfg.model.init_from)
  model = clip_weights.load(cfg.model.init_from)
  c = model.config
  assert (c.image_size, c.patch_size, c.vocab_size, c.embed_dim) == (64, 8, 259, 32)
