"""Orbax checkpoints in `<workdir>/checkpoints`: periodic saves, keep-N, resume, SIGTERM save,
and the lock that keeps two training runs out of one workdir.

A checkpoint holds the whole train state (step, parameters, other model variables, optimizer
state). Data order and step randomness are functions of (seed, step), so restoring the state
of step s and restarting the input pipeline at s continues exactly as an uninterrupted run.
Arrays are restored directly into their target shardings (replicated or FSDP).

Faults: a latest checkpoint that does not restore (a truncated array file, missing metadata:
a run killed while writing, a full disk) is skipped with a warning naming it and renamed to
`<step>.unrestorable`; the newest one that restores is used. When none restores, one error
names the directory.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
import time
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = 'train.lock'
UNRESTORABLE_SUFFIX = '.unrestorable'


class CheckpointError(RuntimeError):
  """No checkpoint of the directory could be restored; the message names it."""


class WorkdirLockedError(RuntimeError):
  """Another training run holds the workdir's lock; the message names the lock file."""


def _is_key(x: Any) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(tree: Any) -> Any:
  """Typed PRNG keys become their uint32 key data (Orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: Any) -> Any:
  def one(x):
    if _is_key(x):
      x = jax.eval_shape(jax.random.key_data, x)
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree.map(one, tree)


def _from_saveable(restored: Any, template: Any) -> Any:
  def one(r, t):
    if _is_key(t):
      return jax.random.wrap_key_data(jnp.asarray(r), impl=jax.random.key_impl(t))
    return r
  return jax.tree.map(one, restored, template)


def locate(workdir: str, checkpoint: Optional[str] = None) -> tuple[str, Optional[int]]:
  """(run directory, step or None = latest) named by `--checkpoint` and `--workdir`.

  `checkpoint`: None (the latest of `workdir`), a step number, or a path to
  `<run>/checkpoints[/<step>]` or `<run>`. Raises FileNotFoundError when the run directory
  has no checkpoints.
  """
  run_dir, step = workdir, None
  if checkpoint:
    path = str(checkpoint).rstrip('/')
    if path.isdigit():
      step = int(path)
    else:
      if os.path.basename(path).isdigit():
        step, path = int(os.path.basename(path)), os.path.dirname(path)
      if os.path.basename(path) == CHECKPOINT_DIR:
        path = os.path.dirname(path)
      run_dir = path
  directory = os.path.join(run_dir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoints directory {directory} (--checkpoint / --workdir)')
  return run_dir, step


class Checkpointer:
  """Wraps `ocp.CheckpointManager` for the train state.

  Args:
    workdir: the run directory; checkpoints go to `<workdir>/checkpoints/<step>`.
    keep: number of checkpoints kept (oldest deleted first).
    every_steps: `should_save(step)` is true every this many steps.
    async_save: write in a background thread (training continues while the files are written).
  """

  def __init__(self, workdir: str, *, keep: int = 3, every_steps: int = 1000,
               async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, *, force: bool = True) -> bool:
    saved = self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state))),
        force=force)
    if saved:
      logging.info('Checkpoint of step %d -> %s', step, self.directory)
    return saved

  def restore(self, template: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, dtypes and shardings of `template` (a live state).

    `step=None`: the newest checkpoint that restores; newer ones that do not are skipped
    with a warning and renamed `<step>.unrestorable` (so later saves can reuse the step).
    Raises CheckpointError naming the directory when none restores.
    """
    if step is not None:
      if step not in self.all_steps():
        raise FileNotFoundError(f'no checkpoint of step {step} in {self.directory} '
                                f'(have {self.all_steps()})')
      return self._restore(template, step)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    errors = []
    for s in steps:
      try:
        state = self._restore(template, s)
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
        errors.append((s, reason))
        logging.warning('Checkpoint %s/%d cannot be restored (%s); trying the previous one.',
                        self.directory, s, reason)
        continue
      for bad, _ in errors:
        self._set_aside(bad)
      return state
    raise CheckpointError(
        f'no checkpoint in {self.directory} can be restored (steps {steps}); the newest, step '
        f'{errors[0][0]}, failed with {errors[0][1]}. If the config changed since these were '
        'written (backbone, FogNet switches), use the original config or a new --workdir.')

  def _restore(self, template: Any, step: int) -> Any:
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template))))
    except (ValueError, KeyError) as e:
      raise ValueError(f'checkpoint {self.directory}/{step} does not match the configured model '
                       f'(different backbone or switches?) or is incomplete: {e}') from e
    logging.info('Restored checkpoint of step %d from %s', step, self.directory)
    return _from_saveable(restored['state'], template)

  def _set_aside(self, step: int) -> None:
    """Renames an unrestorable checkpoint out of the manager's sight (process 0)."""
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst = f'{src}{UNRESTORABLE_SUFFIX}'
      if os.path.exists(dst):
        dst = f'{dst}.{int(time.time())}'
      os.rename(src, dst)
      logging.warning('Moved the unrestorable checkpoint %s to %s.', src, dst)
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True when JAX's multi-host preemption service saw a preemption notice (TPU pods)."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # pylint: disable=broad-except
      return False

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class WorkdirLock:
  """An exclusive lock on `<workdir>/train.lock` for the duration of a training run.

  `flock` locks belong to the process: a run that is killed releases its lock, so a lock
  file left behind never blocks. On a file system without `flock` (some network mounts) the
  run goes on with a warning. Only process 0 of a multi-process job takes the lock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def acquire(self) -> 'WorkdirLock':
    if jax.process_index() != 0 or '://' in self.path:
      return self
    os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
    f = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      raise WorkdirLockedError(
          f'{os.path.dirname(self.path)} is in use by another training run: the lock '
          f'{self.path} is held ({holder}). Wait for it to finish, stop it, or use another '
          '--workdir.') from None
    except OSError as e:
      logging.warning('Cannot lock %s (%s); two runs on this workdir would not be detected.',
                      self.path, e)
      f.close()
      return self
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()} since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


class SigtermFlag:
  """Sets a flag on SIGTERM (preemptible TPUs, Colab, schedulers); the loop saves and exits.

  Only installs from the main thread; restores the previous handler on `restore()`.
  """

  def __init__(self):
    self.event = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('SIGTERM received: saving a checkpoint and stopping after this step.')
    self.event.set()

  @property
  def triggered(self) -> bool:
    return self.event.is_set()

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
