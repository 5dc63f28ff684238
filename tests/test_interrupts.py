"""Ctrl-C during training: the first finishes the step, saves a checkpoint and exits with
status 0 (as SIGTERM does); a second stops at once, with one line and status 130, and the last
complete checkpoint stays.

The worker runs in a subprocess (`python tests/test_interrupts.py WORKDIR BLOCK_AT`): its data
stream blocks before batch BLOCK_AT until the file WORKDIR/release exists, so the signals
arrive at a known step.
"""

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIRST = 'Interrupted (Ctrl-C): saving a checkpoint and stopping after this step'
SECOND = 'Interrupted again: stopped at once, without saving; the last complete checkpoint is kept.'


def _config():
  import train_toy as toy

  return toy.config(
    num_train_steps=10, checkpoint_every_steps=4, log_every_steps=1, keep_checkpoints=2
  )


def _run(workdir, block_at):
  import train_toy as toy
  from flax import nnx

  from fognet_jax import sharding
  from fognet_jax import train

  cfg = _config()
  mesh = sharding.make_mesh(1)

  _, state, _ = train.train(
    cfg,
    workdir,
    **toy.run_parts(cfg, mesh),
    model=toy.ToyModel(rngs=nnx.Rngs(cfg.seed)),
    loss_fn=toy.toy_loss,
    batches=toy.blocking_batches(cfg, workdir, block_at),
  )
  print(f'stopped at step {int(state.step)}', flush=True)


def _start(workdir, block_at):
  env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.Popen(
    [sys.executable, os.path.join(HERE, 'test_interrupts.py'), workdir, str(block_at)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for(path, proc, timeout=180):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, f'worker exited early: {proc.communicate()[1][-3000:]}'
    assert time.time() < deadline, f'timed out waiting for {path}'
    time.sleep(0.1)


def _read_until(proc, text, timeout=60) -> list:
  """stderr lines of `proc` up to the one that contains `text`."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stderr.readline()
    assert line, f'worker exited: {"".join(lines)[-3000:]}'
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f'no {text!r} in {"".join(lines)[-3000:]}')


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def test_ctrl_c_finishes_the_step_saves_and_exits_0(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  proc = _start(workdir, 5)  # blocks before step 6; checkpoint 4 is written
  try:
    _wait_for(os.path.join(workdir, 'blocked'), proc)
    proc.send_signal(signal.SIGINT)
    _read_until(proc, FIRST)
    open(os.path.join(workdir, 'release'), 'w').close()
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  assert out.splitlines()[-1] == 'stopped at step 6'  # after the progress lines
  assert _steps(workdir) == [4, 6]


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  proc = _start(workdir, 5)
  try:
    _wait_for(os.path.join(workdir, 'blocked'), proc)
    _wait_for(os.path.join(workdir, 'checkpoints', '4'), proc)
    proc.send_signal(signal.SIGINT)
    _read_until(proc, FIRST)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # without a release: it stops where it waits
  finally:
    proc.kill()
  assert proc.returncode == 130, err[-3000:]
  assert err.splitlines() == [SECOND], err[-3000:]
  assert 'stopped at' not in out
  assert _steps(workdir) == [4]
  # The checkpoint restores: a new run resumes from it and finishes.
  os.remove(os.path.join(workdir, 'blocked'))
  proc = _start(workdir, -1)
  out, err = proc.communicate(timeout=180)
  assert proc.returncode == 0, err[-3000:]
  assert out.splitlines()[-1] == 'stopped at step 10'
  with open(os.path.join(workdir, 'starts.log')) as f:
    assert f.read().split() == ['0', '4']


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  _run(sys.argv[1], int(sys.argv[2]))
