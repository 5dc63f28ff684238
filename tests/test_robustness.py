"""`python -m fognet_jax.robustness`: a trained run evaluated on its clean test clips in ASM fog
of several densities; density 0 is the clean-stream evaluation, denser fog lowers the
contrast, bad arguments are one `error:` line."""

import json
import os

import main_testutil as U
import numpy as np
import pytest

from fognet_jax import input_pipeline
from fognet_jax import predict
from fognet_jax import robustness

_run = U.run_module


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A run of configs/synthetic.py:scratch (tiny: 3 steps on a miniature generated dataset),
  evaluated on the clean test clips (its results.json)."""
  base = tmp_path_factory.mktemp('robustness')
  workdir = str(base / 'run')
  r = _run(
    'fognet_jax.main',
    '--config=configs/synthetic.py:scratch',
    f'--workdir={workdir}',
    '--config.eval.stream=clean',
    *U.tiny_data_args(base),
    *U.TINY,
  )
  assert r.returncode == 0, r.stderr[-4000:]
  return workdir


def test_density_zero_is_the_clean_evaluation(run_dir, tmp_path):
  out = tmp_path / 'out'
  r = _run('fognet_jax.robustness', f'--workdir={run_dir}', '--densities=0,3', f'--out={out}')
  assert r.returncode == 0, r.stderr[-4000:]
  summary = json.loads((out / robustness.RESULTS_FILE).read_text())
  assert (out / robustness.PLOT_FILE).stat().st_size > 0
  (entry,) = summary['runs']
  assert entry['workdir'] == run_dir and entry['densities'] == [0.0, 3.0]
  progress = [line for line in r.stdout.splitlines() if 'Top-1' in line]
  assert len(progress) == 2 and 'beta=0:' in progress[0] and 'beta=3:' in progress[1]

  with open(os.path.join(run_dir, 'results.json')) as f:
    clean = json.load(f)  # fognet_jax.main's evaluation of the last checkpoint, clean stream
  assert clean['stream'] == 'clean' and entry['step'] == clean['step'] == 3
  assert (entry['top1'][0], entry['top5'][0]) == (clean['top1'], clean['top5'])

  # The model's inputs at density 0 are the clean stream's evaluation views, bit for bit;
  # at density 3 every clip is fogged.
  config = predict.load_config(run_dir)
  batch = config.eval.batch_size
  reference = list(
    input_pipeline.eval_iterator(
      config.data, batch_size=batch, stream='clean', pixels_on_device=config.perf.pixels_on_device
    )
  )
  zero = list(robustness.eval_batches(config, 0.0))
  dense = list(robustness.eval_batches(config, 3.0))
  assert len(zero) == len(dense) == len(reference) > 0
  for ref, z, d in zip(reference, zero, dense):
    for key in ('frames', 'label', 'mask'):
      np.testing.assert_array_equal(z[key], ref[key])
    n = ref['mask'].sum()
    assert np.all(np.any(d['frames'][:n] != ref['frames'][:n], axis=(1, 2, 3, 4, 5)))


def test_denser_fog_lowers_the_contrast():
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, size=(3, 24, 32, 3), dtype=np.uint8)
  airlight = robustness.clip_airlight(seed=0, index=5)
  assert airlight == robustness.clip_airlight(seed=0, index=5) != robustness.clip_airlight(1, 5)
  assert robustness.fog_frames(clip, 0.0, airlight) is clip  # no fog: the clip itself
  stds, means = [], []
  for beta in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0):
    foggy = robustness.fog_frames(clip, beta, airlight)
    assert foggy.dtype == np.uint8 and foggy.shape == clip.shape
    stds.append(foggy.reshape(-1, 3).std(0))
    means.append(foggy.reshape(-1, 3).mean(0))
  assert np.all(np.diff(stds, axis=0) < 0), stds  # strictly, in every channel
  # homogeneous: t = exp(-beta) everywhere; the clip fades into the airlight
  np.testing.assert_allclose(stds[1] / stds[0], np.exp(-0.5), rtol=0.02)
  np.testing.assert_allclose(means[-1], 255 * np.asarray(airlight), atol=4)
  # a depth map: the near half (d = 0.1) keeps more contrast than the far one (d = 1)
  depth = np.where(np.arange(32) < 16, 0.1, 1.0)[None, :].repeat(24, 0).astype(np.float32)
  foggy = robustness.fog_frames(clip, 2.0, airlight, depth=depth)
  assert foggy[..., :16, :].std() > 3 * foggy[..., 16:, :].std()


@pytest.mark.parametrize('case', ['missing_dir', 'not_a_number', 'negative'])
def test_bad_arguments_are_one_error_line(run_dir, tmp_path, case):
  missing = str(tmp_path / 'missing')
  args, named = {
    'missing_dir': ([f'--workdir={run_dir},{missing}', '--densities=0,1'], missing),
    'not_a_number': ([f'--workdir={run_dir}', '--densities=0,x,2'], "'x'"),
    'negative': ([f'--workdir={run_dir}', '--densities=0,-1'], "'-1'"),
  }[case]
  out = tmp_path / 'out'
  r = _run('fognet_jax.robustness', *args, f'--out={out}', timeout=120)
  assert r.returncode == 1, r.stderr[-3000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and named in errors[0], r.stderr[-3000:]
  assert 'Traceback' not in r.stderr and r.stdout == '' and not out.exists()


def test_what_the_argument_checks_name(run_dir, tmp_path):
  assert robustness.parse_densities(['0', '0.5', '4']) == [0.0, 0.5, 4.0]
  for bad, named in (([], '--densities is empty'), (['nan'], "'nan'"), (['1', ''], "''")):
    with pytest.raises(ValueError, match=named):
      robustness.parse_densities(bad)
  assert robustness.check_run(run_dir)['seed'] == 0
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}/config.json does not exist'):
    robustness.check_run(str(tmp_path))
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(FileNotFoundError, match=f'no checkpoint in {tmp_path}/checkpoints'):
    robustness.check_run(str(tmp_path))


def test_seeds_of_one_config_are_one_line():
  base = {
    'seed': 0,
    'data': {'dataset': 'd', 'fog': None, 'perspective': None},
    'model': {
      'arch': 'fognet',
      'fas': {'enabled': True, 'concat': 'channels'},
      'me': {'enabled': True},
      'csa': {'enabled': True},
    },
  }
  other = json.loads(json.dumps(base))
  other['model']['me']['enabled'] = False
  configs = {
    'r/a/seed0': base,
    'r/a/seed1': dict(base, seed=1),
    'r/b/seed0': other,
    'r/c/seed0': dict(base, data=dict(base['data'], dataset='e')),
  }
  groups = robustness.group_runs(configs)
  assert [g['workdirs'] for g in groups] == [
    ['r/a/seed0', 'r/a/seed1'],
    ['r/b/seed0'],
    ['r/c/seed0'],
  ]
  assert [g['label'] for g in groups] == [
    'fognet_fas-me-csa [a] (2 seeds)',
    'fognet_fas-csa',
    'fognet_fas-me-csa [seed0]',
  ]
