"""Running the entry points in a subprocess on a miniature generated dataset."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/synthetic.py:scratch shrunk to seconds: 2 frames of 32x32, batch 8, 3 steps.
TINY = [
  '--config.data.num_frames=2',
  '--config.data.image_size=32',
  '--config.model.clip_overrides.image_size=32',
  '--config.model.clip_overrides.patch_size=16',
  '--config.train.batch_size=8',
  '--config.eval.batch_size=8',
  '--config.train.num_train_steps=3',
  '--config.train.log_every_steps=1',
  '--config.train.checkpoint_every_steps=2',
  '--config.perf.num_workers=2',
]


def run_module(module, *args, timeout=300, env=None):
  """`python -m module args` from the repository root (environment `env`, default this
  process's); the CompletedProcess."""
  env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def tiny_data_args(base) -> list:
  """Flags pointing at a miniature synthetic_fog_act (1 clip per group) built under `base`."""
  manual = base / 'manual'
  manual.mkdir()
  (manual / 'generation.json').write_text(
    json.dumps({'train_per_group': 1, 'test_per_group': 1, 'num_frames': 3})
  )
  return [f'--config.data.data_dir={base / "tfds"}', f'--config.data.manual_dir={manual}']


def mount_tmpfs(path, size_bytes: int) -> None:
  """A small disk at `path`: a tmpfs of `size_bytes`, mounted as root (the test machines run
  as root; a failure to mount fails the test, it does not skip it)."""
  os.makedirs(path)
  r = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', f'size={size_bytes // 1024}k', 'tmpfs', str(path)],
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0, f'cannot mount a tmpfs at {path}: {r.stderr.strip()}'
