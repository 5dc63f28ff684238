"""Faults a user hits: a corrupt or half-written latest checkpoint, two runs on one workdir."""

import os
import signal
import subprocess
import sys
import types

import jax
import main_testutil
import numpy as np
import pytest
import train_toy as toy
from flax import nnx

from fognet_jax import checkpointing
from fognet_jax import metrics
from fognet_jax import sharding
from fognet_jax import train


def _train(workdir, steps=6, *, stop_after=None, **kw):
  """The toy run of `steps` steps; `stop_after`: a SIGTERM (preemption) ends it at that step."""
  cfg = toy.config(
    num_train_steps=steps, checkpoint_every_steps=2, log_every_steps=1, async_checkpointing=False
  )
  mesh = sharding.make_mesh(1)
  starts = []

  def batches(start):
    starts.append(start)
    for i, b in enumerate(toy.batches(0, 16, start), start):
      if stop_after is not None and i == stop_after - 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield b

  _, state, _ = train.train(
    cfg,
    workdir,
    **toy.run_parts(cfg, mesh),
    model=toy.ToyModel(rngs=nnx.Rngs(0)),
    loss_fn=toy.toy_loss,
    batches=batches,
    **kw,
  )
  return state, starts


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(os.path.join(step_dir, 'state'))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)


def _drop_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted 6-step run."""
  state, _ = _train(str(tmp_path_factory.mktemp('ref')))
  return _params(state)


@pytest.mark.parametrize('damage', [_truncate, _drop_metadata])
def test_unrestorable_latest_checkpoint_falls_back_to_the_previous_one(
  tmp_path, reference, damage, caplog
):
  workdir = str(tmp_path / 'run')
  _train(workdir, stop_after=4)  # checkpoints 2 and 4, then preempted
  ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  damage(os.path.join(ckpt_dir, '4'))
  with caplog.at_level('WARNING'):
    state, starts = _train(workdir)
  assert starts == [2]  # resumed from the intact step 2
  assert any(f'{ckpt_dir}/4 cannot be restored' in r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(ckpt_dir, '4' + checkpointing.UNRESTORABLE_SUFFIX))
  # ... and the run continues exactly as an uninterrupted one.
  for got, want in zip(_params(state), reference):
    np.testing.assert_array_equal(got, want)
  assert [row['step'] for row in metrics.read_history(workdir)] == [1, 2, 3, 4, 5, 6]


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path):
  workdir = str(tmp_path / 'run')
  _train(workdir, stop_after=4)
  ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  for step in ('2', '4'):
    _truncate(os.path.join(ckpt_dir, step))
  with pytest.raises(
    checkpointing.CheckpointError,
    match=rf'no checkpoint in {ckpt_dir} can be restored \(steps \[4, 2\]\)',
  ):
    _train(workdir)
  # Nothing was renamed or deleted: the user decides.
  assert sorted(os.listdir(ckpt_dir)) == ['2', '4']


_HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], 'a+')
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write('pid 4242 on somehost since then'); f.flush()
print('locked', flush=True)
time.sleep(120)
"""


def test_second_run_on_a_workdir_is_refused_naming_the_lock(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  lock = os.path.join(workdir, checkpointing.LOCK_FILE)
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, lock], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(
      checkpointing.WorkdirLockedError,
      match=rf'{workdir} is in use by another training run: the lock {lock} '
      r'is held \(pid 4242 on somehost since then\)',
    ):
      _train(workdir, stop_after=2)
    assert sorted(os.listdir(workdir)) == [checkpointing.LOCK_FILE]  # nothing touched
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone (killed): its lock file stays, and does not block.
  state, _ = _train(workdir, stop_after=2)
  assert int(state.step) == 2
  # A run that ended leaves the lock free too.
  state, starts = _train(workdir)
  assert starts == [2] and int(state.step) == 6


def test_lock_is_released_when_training_fails(tmp_path):
  workdir = str(tmp_path / 'run')
  cfg = toy.config(num_train_steps=4, log_every_steps=1, async_checkpointing=False)
  mesh = sharding.make_mesh(1)
  with pytest.raises(train.NonFiniteLossError) as failure:
    train.train(
      cfg,
      workdir,
      **toy.run_parts(cfg, mesh),
      model=toy.ToyModel(rngs=nnx.Rngs(0)),
      loss_fn=toy.toy_loss,
      batches=lambda s: toy.batches(0, 16, s, nan_at=1),
    )
  # `failure` keeps the traceback, and with it train's frame and its lock object, alive: the
  # lock is free only because train released it, not because the object was collected.
  assert failure.traceback
  lock = checkpointing.WorkdirLock(workdir).acquire()  # free again
  assert lock._file is not None  # pylint: disable=protected-access
  lock.release()


def test_a_restore_that_fails_leaves_the_config_json_of_the_run(tmp_path):
  workdir = str(tmp_path / 'run')
  _train(workdir, stop_after=4)
  with open(os.path.join(workdir, 'config.json')) as f:
    written = f.read()
  ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  for step in ('2', '4'):
    _truncate(os.path.join(ckpt_dir, step))
  cfg = toy.config(num_train_steps=6, learning_rate=0.5, async_checkpointing=False)
  mesh = sharding.make_mesh(1)
  started = []
  with pytest.raises(checkpointing.CheckpointError):
    train.train(
      cfg,
      workdir,
      **toy.run_parts(cfg, mesh),
      model=toy.ToyModel(rngs=nnx.Rngs(0)),
      loss_fn=toy.toy_loss,
      batches=lambda s: toy.batches(0, 16, s),
      on_start=started.append,
    )
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == written  # the config the checkpoints were written with
  assert started == []


def test_the_reads_a_failed_restore_leaves_behind_report_nothing(tmp_path, monkeypatch):
  """A restore reads the arrays concurrently on an event loop that Orbax closes when one read
  fails. The reads left behind reported their errors with tracebacks (hundreds for a large
  model): a TensorStore read still in flight `Event loop is closed` when it completes, a
  pending read coroutine its error when it is collected. Here one of each, as the restore
  leaves them; the fallback's one warning says what happened."""
  import asyncio
  import gc
  import time

  import tensorstore as ts

  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  checkpointing.Checkpointer(str(tmp_path), async_save=False).close()

  promise, in_flight = ts.Promise.new()

  async def restore():
    async def failing_read():
      raise ValueError('truncated array file')

    async def read():
      return await in_flight

    await asyncio.gather(failing_read(), read())

  loop = asyncio.new_event_loop()
  with pytest.raises(ValueError):
    loop.run_until_complete(restore())
  loop.close()
  promise.set_result(0)  # the read completes after its loop has closed
  time.sleep(0.5)

  # Orbax's read coroutine (serialization._read_array_index_and_device_put) turns any error,
  # the GeneratorExit of its closing included, into an Exception of its own.
  source = (
    'async def read_array(future):\n'
    '  try:\n'
    '    return await future\n'
    '  except BaseException as e:\n'
    '    raise Exception("Encountered error while reading array index") from e\n'
  )
  namespace = {}
  filename = os.path.join('site-packages', 'orbax', 'checkpoint', '_src', 'serialization.py')
  exec(compile(source, filename, 'exec'), namespace)  # pylint: disable=exec-used
  other_loop = asyncio.new_event_loop()
  pending = namespace['read_array'](other_loop.create_future())
  pending.send(None)  # waits for its read
  del pending
  gc.collect()
  other_loop.close()
  assert not reported, [str(r.exc_value)[:200] for r in reported]

  # Every other report still goes through.
  sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError('something else')))
  assert [str(r.exc_value) for r in reported] == ['something else']


def test_a_full_disk_during_a_background_save_names_the_last_complete_checkpoint(tmp_path, caplog):
  import time

  workdir = str(tmp_path / 'run')
  ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  main_testutil.mount_tmpfs(ckpt_dir, 1 << 20)  # the checkpoints on a small disk
  try:

    def batches(start):
      for i, b in enumerate(toy.batches(0, 16, start), start):
        if i == 3:  # before step 4: checkpoint 2 is complete, then the disk fills up
          while not os.path.isdir(os.path.join(ckpt_dir, '2')):
            time.sleep(0.05)
          with open(os.path.join(ckpt_dir, 'filler'), 'wb') as f:
            with pytest.raises(OSError, match='No space left on device'):
              while True:
                f.write(b'\0' * 65536)
                f.flush()
        yield b

    cfg = toy.config(
      num_train_steps=6, checkpoint_every_steps=2, log_every_steps=1, async_checkpointing=True
    )
    mesh = sharding.make_mesh(1)
    with caplog.at_level('INFO'), pytest.raises(checkpointing.CheckpointSaveError) as failure:
      train.train(
        cfg,
        workdir,
        **toy.run_parts(cfg, mesh),
        model=toy.ToyModel(rngs=nnx.Rngs(0)),
        loss_fn=toy.toy_loss,
        batches=batches,
      )
    assert str(failure.value) == (
      f'cannot write the checkpoint of step 4 to {ckpt_dir} (No space left on device); the '
      f'last complete checkpoint is {ckpt_dir}/2'
    )
    messages = [r.getMessage() for r in caplog.records]
    assert f'Checkpoint of step 2 -> {ckpt_dir}' in messages
    assert not any('Checkpoint of step 4' in m for m in messages)
    # The temporary directory of step 4 is removed; checkpoint 2 restores.
    assert sorted(os.listdir(ckpt_dir)) == ['2', 'filler']
    os.remove(os.path.join(ckpt_dir, 'filler'))
    _, starts = _train(workdir)
    assert starts == [2]
  finally:
    subprocess.run(['umount', ckpt_dir], check=False)
