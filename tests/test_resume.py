"""Exact resume: a run killed with SIGKILL after a checkpoint, restarted, stopped by SIGTERM
(which saves), and restarted again ends with the same parameters and logged metrics as an
uninterrupted run of the same config and seed.

The worker runs in a subprocess (`python tests/test_resume.py WORKDIR BLOCK_AT OUT`); its data
stream blocks before batch BLOCK_AT and waits for a file, which lets the test kill or signal
it at a known step without timing assumptions.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TIMING_KEYS = ('steps_per_sec', 'clip_pairs_per_sec')


def _config():
  import train_toy as toy

  return toy.config(
    num_train_steps=10, checkpoint_every_steps=4, log_every_steps=1, keep_checkpoints=2
  )


def _flat_params(state):
  from fognet_jax import optim

  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  return {optim.path_str(p): np.asarray(x) for p, x in leaves}


def _run(workdir, block_at=-1):
  """Trains the toy model in `workdir`; before batch `block_at` waits for `workdir/release`."""
  import train_toy as toy
  from flax import nnx

  from fognet_jax import sharding
  from fognet_jax import train

  cfg = _config()
  mesh = sharding.make_mesh(8)

  _, state, _ = train.train(
    cfg,
    workdir,
    **toy.run_parts(cfg, mesh),
    model=toy.ToyModel(rngs=nnx.Rngs(cfg.seed)),
    loss_fn=toy.toy_loss,
    batches=toy.blocking_batches(cfg, workdir, block_at),
  )
  return state


def _wait_for(path, proc, timeout=180):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, f'worker exited early with {proc.returncode}'
    assert time.time() < deadline, f'timed out waiting for {path}'
    time.sleep(0.1)


def _start(workdir, block_at):
  env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.Popen(
    [
      sys.executable,
      os.path.join(HERE, 'test_resume.py'),
      workdir,
      str(block_at),
      os.path.join(workdir, 'params.npz'),
    ],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )


def _history(workdir):
  from fognet_jax import metrics

  return [
    {k: v for k, v in row.items() if k not in TIMING_KEYS} for row in metrics.read_history(workdir)
  ]


def test_sigkill_then_sigterm_then_finish_equals_uninterrupted(tmp_path):
  from fognet_jax import checkpointing

  ref_dir, run_dir = str(tmp_path / 'uninterrupted'), str(tmp_path / 'interrupted')
  os.makedirs(run_dir)
  ref = _flat_params(_run(ref_dir))

  # 1) SIGKILL while blocked before batch 6 (step 7): checkpoint 4 exists, steps 5-6 are lost.
  proc = _start(run_dir, 6)
  _wait_for(os.path.join(run_dir, 'blocked'), proc)
  _wait_for(os.path.join(run_dir, checkpointing.CHECKPOINT_DIR, '4'), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(run_dir, 'params.npz'))
  os.remove(os.path.join(run_dir, 'blocked'))

  # 2) Restart: resumes from 4; SIGTERM while blocked before batch 8 -> finishes step 9,
  #    saves it and exits cleanly.
  proc = _start(run_dir, 8)
  _wait_for(os.path.join(run_dir, 'blocked'), proc)
  proc.send_signal(signal.SIGTERM)
  open(os.path.join(run_dir, 'release'), 'w').close()
  _, err = proc.communicate(timeout=180)
  assert proc.returncode == 0, err.decode()[-3000:]
  assert b'Resuming at step 4' in err or b'Restored checkpoint of step 4' in err
  steps = sorted(int(d) for d in os.listdir(os.path.join(run_dir, 'checkpoints')) if d.isdigit())
  assert steps[-1] == 9, steps
  assert not os.path.exists(os.path.join(run_dir, 'params.npz'))  # stopped early
  os.remove(os.path.join(run_dir, 'release'))

  # 3) Restart again: resumes from 9 and finishes.
  proc = _start(run_dir, -1)
  _, err = proc.communicate(timeout=180)
  assert proc.returncode == 0, err.decode()[-3000:]
  # Where each run's data stream started: from scratch, then at the restored steps 4 and 9
  # (a run that ignored the checkpoint would end with the same parameters).
  with open(os.path.join(run_dir, 'starts.log')) as f:
    assert f.read().split() == ['0', '4', '9']
  assert b'Resuming at step 9' in err, err.decode()[-3000:]
  got = dict(np.load(os.path.join(run_dir, 'params.npz')))

  assert sorted(got) == sorted(ref)
  max_diff = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
  print(f'exact resume: max |param difference| = {max_diff:.3e}')
  assert max_diff == 0.0
  ref_hist, got_hist = _history(ref_dir), _history(run_dir)
  assert [r['step'] for r in got_hist] == list(range(1, 11))
  assert got_hist == ref_hist


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.INFO)
  workdir, block, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  final = _run(workdir, block)
  if int(final.step) == _config().train.num_train_steps:
    np.savez(out, **_flat_params(final))
