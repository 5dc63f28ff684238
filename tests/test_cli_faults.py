"""User errors and faults through `python -m fognet_jax.main`: each refusal is one `error:` line
on stderr and exit status 1, before anything else is printed; a corrupt latest checkpoint is
one warning; a full disk during a save is one error naming the last complete checkpoint."""

import filecmp
import os
import re
import shutil
import subprocess

import config_testutil
import main_testutil as U
import pytest

from fognet_jax import config_lib

SCRATCH = '--config=configs/synthetic.py:scratch'
WARNING = re.compile(r'^W\d{4} ')


def _main(*args, timeout=300):
  return U.run_module('fognet_jax.main', *args, timeout=timeout)


def _one_error_line(r) -> str:
  """The only line on stderr, which must be an `error:` line, after exit status 1."""
  assert r.returncode == 1, r.stderr[-3000:]
  lines = r.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope='module')
def data_args(tmp_path_factory):
  return U.tiny_data_args(tmp_path_factory.mktemp('synthetic'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_args):
  """A tiny 3-step run (checkpoints 2 and 3), trained once; tests copy it."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  r = _main(SCRATCH, f'--workdir={workdir}', '--mode=train_only', *data_args, *U.TINY)
  assert r.returncode == 0, r.stderr[-4000:]
  return workdir


def _copy(run, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(run, workdir)
  return workdir


def _truncate_largest_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  path = max(files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)


# (command-line arguments, the start of the one error line they give)
CONFIG_ERRORS = [
  (
    ['--config=configs/synthetic.py:nonsense'],
    "error: --config=configs/synthetic.py:nonsense: unknown config variant token 'nonsense'",
  ),
  (
    [SCRATCH, '--config.train.bach_size=3'],
    "error: --config.train.bach_size: train has no key 'bach_size'; did you mean train.batch_size?",
  ),
  (
    [SCRATCH, '--config.trian.batch_size=3'],
    "error: --config.trian.batch_size: the config has no key 'trian'; did you mean train?",
  ),
  (
    ['--config=configs/nope.py'],
    'error: --config=configs/nope.py: no such config file configs/nope.py',
  ),
  (
    [SCRATCH, '--config.train.batch_size=-1'],
    'error: config.train.batch_size: must be an integer >= 1, got -1',
  ),
  (
    [SCRATCH, '--config.train.batch_size=abc'],
    'error: flag --config.train.batch_size=abc: invalid literal for int()',
  ),
  (
    [SCRATCH, '--config.data.manual_dir=/no/such/dir'],
    "error: config.data.manual_dir: directory '/no/such/dir' does not exist",
  ),
  (
    ['--config=configs/fogact.py:rn50', '--config.model.init_from=/no/such/RN50.pt'],
    "error: config.model.init_from: path '/no/such/RN50.pt' does not exist",
  ),
]
# The first two and the missing file: the experiments runner takes main's flags.
RUNNER_CONFIG_ERRORS = [CONFIG_ERRORS[i] for i in (0, 1, 3)]


@pytest.mark.parametrize('args,expected', CONFIG_ERRORS)
def test_a_config_error_is_one_line(tmp_path, args, expected):
  r = _main(*args, f'--workdir={tmp_path / "run"}', timeout=120)
  assert _one_error_line(r).startswith(expected)
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('args,expected', RUNNER_CONFIG_ERRORS)
def test_the_experiments_runner_takes_main_flags_with_one_line_errors(tmp_path, args, expected):
  r = U.run_module('fognet_jax.experiments', *args, f'--workdir={tmp_path / "tables"}', timeout=120)
  assert _one_error_line(r).startswith(expected)


def test_a_dataset_that_is_not_prepared_is_one_line(tmp_path):
  # FogAct is a manual download: without data.manual_dir it cannot be built.
  r = _main(
    '--config=configs/fogact.py',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    timeout=120,
  )
  assert _one_error_line(r).startswith(
    "error: config.data.manual_dir: dataset 'fogact' is not prepared in"
  )


def test_more_frames_than_the_clips_hold_is_one_line(tmp_path, data_args, trained):
  # (`trained` has built the miniature dataset: 3 frames per clip.)
  r = _main(
    SCRATCH,
    f'--workdir={tmp_path / "run"}',
    *data_args,
    *U.TINY,
    '--config.data.num_frames=40',
    timeout=120,
  )
  line = _one_error_line(r)
  assert line.startswith(
    "error: config.data.num_frames: 40 frames per clip, but 'synthetic_fog_act' in "
  ), line
  assert line.endswith('stores 3 frames per clip; set config.data.num_frames <= 3'), line


def test_a_workdir_whose_checkpoints_do_not_restore_is_one_line(tmp_path, data_args, trained):
  workdir = _copy(trained, tmp_path)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  for step in ('2', '3'):
    _truncate_largest_file(os.path.join(ckpt_dir, step))
  saved = str(tmp_path / 'config.json')
  shutil.copy(os.path.join(workdir, 'config.json'), saved)
  r = _main(
    SCRATCH,
    f'--workdir={workdir}',
    '--mode=train_only',
    *data_args,
    *U.TINY,
    '--config.train.learning_rate=0.01',
  )
  assert _one_error_line(r).startswith(
    f'error: no checkpoint in {ckpt_dir} can be restored (steps [3, 2])'
  )
  # The config the checkpoints were written with is still there.
  assert filecmp.cmp(os.path.join(workdir, 'config.json'), saved, shallow=False)
  assert sorted(os.listdir(ckpt_dir)) == ['2', '3']


def test_evaluating_a_workdir_without_checkpoints_is_one_line(tmp_path):
  r = _main(SCRATCH, f'--workdir={tmp_path}', '--mode=eval', timeout=120)
  assert _one_error_line(r) == (
    f'error: no checkpoints directory {tmp_path}/checkpoints (--checkpoint / --workdir)'
  )


def test_a_corrupt_latest_checkpoint_is_one_warning(tmp_path, data_args, trained):
  workdir = _copy(trained, tmp_path)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  _truncate_largest_file(os.path.join(ckpt_dir, '3'))
  r = _main(SCRATCH, f'--workdir={workdir}', '--mode=train_only', *data_args, *U.TINY)
  assert r.returncode == 0, r.stderr[-4000:]
  assert 'Traceback' not in r.stderr, r.stderr[-4000:]
  warnings = [line for line in r.stderr.splitlines() if WARNING.match(line)]
  assert len(warnings) == 1, warnings
  assert f'Checkpoint {ckpt_dir}/3 cannot be restored (' in warnings[0]
  assert 'using step 2 instead. Kept for inspection as 3.unrestorable' in warnings[0]
  assert sorted(os.listdir(ckpt_dir)) == ['2', '3', '3.unrestorable']


def _size(directory) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(directory) for f in fs)


def test_a_full_disk_during_a_save_is_one_error_line(tmp_path, data_args, trained):
  # The checkpoints directory on a disk with room for half a checkpoint. (A later save that
  # fails, naming the checkpoint before it: test_faults.py.)
  workdir = tmp_path / 'run'
  ckpt_dir = str(workdir / 'checkpoints')
  U.mount_tmpfs(ckpt_dir, _size(os.path.join(trained, 'checkpoints', '2')) // 2)
  try:
    r = _main(SCRATCH, f'--workdir={workdir}', '--mode=train_only', *data_args, *U.TINY)
    assert r.returncode == 1, r.stderr[-4000:]
    assert 'Traceback' not in r.stderr, r.stderr[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
    assert errors == [r.stderr.splitlines()[-1]], r.stderr[-4000:]
    assert errors[0] == (
      f'error: cannot write the checkpoint of step 2 to {ckpt_dir} (No space '
      'left on device); the last complete checkpoint is none (there is no '
      'complete checkpoint)'
    )
    assert 'Checkpoint of step 2 ->' not in r.stderr
    assert os.listdir(ckpt_dir) == []  # the temporary directory of the save removed
  finally:
    subprocess.run(['umount', ckpt_dir], check=False)


_parse = config_testutil.parse


def test_init_from_and_the_clip_overrides_can_be_cleared_on_the_command_line():
  # configs/synthetic.py fine-tunes from its pretrained towers: clearing init_from and giving
  # the architecture is the from-scratch model.
  cfg = _parse(
    f'--config={U.ROOT}/configs/synthetic.py',
    '--config.model.init_from=None',
    '--config.model.clip_overrides.image_size=64',
    '--config.model.clip_overrides.patch_size=8',
    '--config.model.clip_overrides.vocab_size=259',
  )
  assert cfg.model.init_from is None
  assert (cfg.model.clip_overrides.image_size, cfg.model.clip_overrides.patch_size) == (64, 8)
  config_lib.validate(cfg, num_devices=1)
  cfg = _parse(
    f'--config={U.ROOT}/configs/synthetic.py:scratch',
    '--config.model.clip_overrides.image_size=None',
  )
  assert cfg.model.clip_overrides.image_size is None
  assert cfg.model.clip_overrides.patch_size == 8
  # ... and set again: a path, a hub name.
  cfg = _parse(
    f'--config={U.ROOT}/configs/synthetic.py:scratch',
    '--config.model.init_from=openai/clip-vit-base-patch32',
  )
  assert cfg.model.init_from == 'openai/clip-vit-base-patch32'
  cfg = _parse(f'--config={U.ROOT}/configs/fogact.py', '--config.model.init_from=None')
  assert cfg.model.init_from is None


def test_an_override_of_another_type_is_named():
  cfg = _parse(
    f'--config={U.ROOT}/configs/synthetic.py:scratch',
    '--config.model.clip_overrides.image_size=big',
  )
  with pytest.raises(
    config_lib.ConfigError,
    match=r'config\.model\.clip_overrides\.image_size: must be an integer >= 1, '
    r"got 'big'",
  ):
    config_lib.validate(cfg, num_devices=1)
  cfg = _parse(f'--config={U.ROOT}/configs/synthetic.py', '--config.model.init_from=True')
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.init_from: must be a path'):
    config_lib.validate(cfg, num_devices=1)
