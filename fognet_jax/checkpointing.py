"""Orbax checkpoints in `<workdir>/checkpoints`: periodic saves, keep-N, resume, SIGTERM save,
and the lock that keeps two training runs out of one workdir.

A checkpoint holds the whole train state (step, parameters, other model variables, optimizer
state). Data order and step randomness are functions of (seed, step), so restoring the state
of step s and restarting the input pipeline at s continues exactly as an uninterrupted run.
Arrays are restored directly into their target shardings (replicated or FSDP).

Faults: a latest checkpoint that does not restore (a truncated array file, missing metadata:
a run killed while writing, a full disk) is skipped and renamed to `<step>.unrestorable`; the
newest one that restores is used, and one warning names both. When none restores, one error
names the directory. A save that cannot be written (a full disk) raises one error naming the
directory and the last complete checkpoint, and leaves no temporary directory behind; a save
is logged only once it is complete.
"""

from __future__ import annotations

import fcntl
import glob
import logging as std_logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any
from typing import NoReturn
from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = 'train.lock'
UNRESTORABLE_SUFFIX = '.unrestorable'


class CheckpointError(RuntimeError):
  """No checkpoint of the directory could be restored; the message names it."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written; the message names the directory and the last complete
  checkpoint."""


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

  def __init__(
    self, workdir: str, *, keep: int = 3, every_steps: int = 1000, async_save: bool = True
  ):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.every_steps = every_steps
    self._async = async_save
    self._writing: Optional[int] = None  # the step of a background write not yet confirmed
    self._failed: Optional[int] = None  # the step of a save that failed and was reported
    _drop_failed_read_reports()  # a failing write may leave them before its error is seen
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, *, force: bool = True) -> bool:
    """Saves `state` as checkpoint `step` (in the background with `async_save`).

    The log says `Checkpoint of step N` once the checkpoint is complete: at once for a
    synchronous save, else at the `poll`, `save` or `close` that finds its write finished.
    Raises CheckpointSaveError when this or the previous background write failed.
    """
    self._confirm_write()
    try:
      saved = self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state))), force=force
      )
    except Exception as e:  # pylint: disable=broad-except
      self._save_failed(step, e)
    if saved:
      if self._async:
        self._writing = step
      else:
        self._confirm(step)
    return saved

  def poll(self) -> None:
    """Confirms a finished background write (raising CheckpointSaveError if it failed); cheap
    while it is still being written. Call it once per training step."""
    if self._writing is not None and not self.manager.is_saving_in_progress():
      self._confirm_write()

  def _confirm_write(self) -> None:
    step, self._writing = self._writing, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._save_failed(step, e)
    self._confirm(step)

  def _confirm(self, step: int) -> None:
    # Orbax may log a failed background write and go on without raising; a step that was not
    # finalised is not in the directory (checked by a single process: in a multi-process job
    # the processes must fail together, and Orbax's own errors do that).
    if jax.process_count() == 1:
      self.manager.reload()
      if step not in self.manager.all_steps():
        self._save_failed(step, None)
    logging.info('Checkpoint of step %d -> %s', step, self.directory)

  def _save_failed(self, step: int, error: Optional[BaseException]) -> NoReturn:
    """Removes the failed write's temporary directory and raises CheckpointSaveError naming the
    last complete checkpoint."""
    self._failed = step
    self._remove_partial(step)
    self.manager.reload()
    complete = [s for s in self.all_steps() if s != step]
    last = (
      f'{self.directory}/{max(complete)}' if complete else 'none (there is no complete checkpoint)'
    )
    reason = _write_error(error) if error is not None else 'the write did not complete'
    raise CheckpointSaveError(
      f'cannot write the checkpoint of step {step} to {self.directory} ({reason}); the last '
      f'complete checkpoint is {last}'
    ) from error

  def _remove_partial(self, step: int) -> None:
    """Removes the temporary directory of a save of `step` (process 0).

    Orbax's writer threads may still be finishing their files when one of them has failed, so
    a removal that a late file defeats is tried again (for up to about 10 s).
    """
    if jax.process_index() != 0:
      return
    pattern = os.path.join(self.directory, f'{step}.orbax-checkpoint-tmp*')
    deadline = time.monotonic() + 10.0
    while True:
      for tmp in glob.glob(pattern):
        shutil.rmtree(tmp, ignore_errors=True)
      if not glob.glob(pattern) or time.monotonic() > deadline:
        return
      time.sleep(0.1)

  def restore(self, template: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, dtypes and shardings of `template` (a live state).

    `step=None`: the newest checkpoint that restores; newer ones that do not are renamed
    `<step>.unrestorable` (so later saves can reuse the step), and one warning names them and
    the step used. Raises CheckpointError naming the directory when none restores.
    """
    if step is not None:
      if step not in self.all_steps():
        raise FileNotFoundError(
          f'no checkpoint of step {step} in {self.directory} (have {self.all_steps()})'
        )
      return self._restore(template, step)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    errors = []
    for s in steps:
      try:
        state = self._restore(template, s)
      except Exception as e:  # pylint: disable=broad-except
        errors.append((s, _one_line(e)))
        continue
      if errors:
        moved = [self._set_aside(bad) for bad, _ in errors]
        bad = ', '.join(str(b) for b, _ in errors)
        logging.warning(
          'Checkpoint %s/%s cannot be restored (%s); using step %d instead. '
          'Kept for inspection as %s.',
          self.directory,
          bad,
          errors[0][1],
          s,
          ', '.join(moved),
        )
      return state
    raise CheckpointError(
      f'no checkpoint in {self.directory} can be restored (steps {steps}); the newest, step '
      f'{errors[0][0]}, failed with {errors[0][1]}. If the config changed since these were '
      'written (backbone, FogNet switches), use the original config or a new --workdir.'
    )

  def _restore(self, template: Any, step: int) -> Any:
    try:
      restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template)))
      )
    except (ValueError, KeyError) as e:
      raise ValueError(
        f'checkpoint {self.directory}/{step} does not match the configured model '
        f'(different backbone or switches?) or is incomplete: {e}'
      ) from e
    logging.info('Restored checkpoint of step %d from %s', step, self.directory)
    return _from_saveable(restored['state'], template)

  def _set_aside(self, step: int) -> str:
    """Renames an unrestorable checkpoint out of the manager's sight (process 0); its new
    name."""
    src = os.path.join(self.directory, str(step))
    dst = f'{src}{UNRESTORABLE_SUFFIX}'
    if os.path.exists(dst):
      dst = f'{dst}.{int(time.time())}'
    if jax.process_index() == 0:
      os.rename(src, dst)
    self.manager.reload()
    return os.path.basename(dst)

  def reached_preemption(self, step: int) -> bool:
    """True when JAX's multi-host preemption service saw a preemption notice (TPU pods)."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # pylint: disable=broad-except
      return False

  def close(self) -> None:
    """Waits for a background write (raising CheckpointSaveError if it failed) and closes."""
    try:
      self._confirm_write()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if self._failed is None:  # else: the failure already reported, again
          raise
      if self._failed is not None:  # its writer threads may have gone on until now
        self._remove_partial(self._failed)


def _one_line(error: BaseException) -> str:
  """'Type: first line of the message', at most 300 characters."""
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0] if text else ""}'[:300]


def _write_error(error: BaseException) -> str:
  """The operating system's reason for a failed write ('No space left on device'), from the
  exception or its causes (TensorStore's messages carry it as `os_error_code`); else
  `_one_line`."""
  e = error
  while e is not None:
    if isinstance(e, OSError) and e.errno:
      return os.strerror(e.errno)
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code:
      return os.strerror(int(code.group(1)))
    e = e.__cause__ or e.__context__
  return _one_line(error)


def _drop_failed_read_reports() -> None:
  """Silences the reports that a failed Orbax restore or save leaves behind.

  A restore reads the arrays concurrently on an event loop that Orbax closes as soon as one
  read fails: the reads still pending are closed, and each reports its error through
  `sys.unraisablehook` with a traceback ('Exception ignored in: <coroutine object
  _read_array_index_and_device_put ...>'); a TensorStore read still in flight reports
  `RuntimeError: Event loop is closed` when it completes. That is hundreds of tracebacks for
  a large model; a failed background write leaves the same. The failure itself reaches the
  caller as an exception. Once a Checkpointer is created, those reports are dropped; every
  other one goes to the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_failed_read_reports', False):
    return

  def hook(unraisable):
    if not _left_by_orbax(unraisable):
      previous(unraisable)

  hook.drops_failed_read_reports = True
  sys.unraisablehook = hook
  # A failed write's other writes end as futures whose errors nobody reads; asyncio logs each
  # when it is collected ('Future exception was never retrieved'), after the run's own error.
  std_logging.getLogger('asyncio').addFilter(_drop_orphaned_write_reports)


def _drop_orphaned_write_reports(record: std_logging.LogRecord) -> bool:
  """False (drop) for asyncio's report of an unread error of an Orbax checkpoint write."""
  message = record.getMessage()
  if not message.startswith(
    ('Future exception was never retrieved', 'Task exception was never retrieved')
  ):
    return True
  return '.orbax-checkpoint-tmp' not in message


def _left_by_orbax(unraisable) -> bool:
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return True
  tb = getattr(unraisable, 'exc_traceback', None) or getattr(error, '__traceback__', None)
  part = f'{os.sep}orbax{os.sep}'
  return tb is not None and any(part in frame.filename for frame in traceback.extract_tb(tb))


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
        '--workdir.'
      ) from None
    except OSError as e:
      logging.warning(
        'Cannot lock %s (%s); two runs on this workdir would not be detected.', self.path, e
      )
      f.close()
      return self
    f.seek(0)
    f.truncate()
    f.write(
      f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")}\n'
    )
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


class StopSignal:
  """SIGTERM (preemptible TPUs, Colab, schedulers) or Ctrl-C (SIGINT) sets a flag; the training
  loop finishes its step, saves a checkpoint and stops. A second Ctrl-C stops the process at
  once (exit status 130) with one line on stderr: the last complete checkpoint stays as it
  is. (In a notebook's kernel it raises KeyboardInterrupt instead.)

  Only installs from the main thread; `restore()` puts the previous handlers back.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.event = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    again = self.event.is_set()
    self.event.set()  # first: a second signal may interrupt this handler
    if signum == signal.SIGINT and again:
      if 'ipykernel' in sys.modules:  # a notebook's interrupt: stop the cell, not the kernel
        raise KeyboardInterrupt
      # Straight to the file descriptor: the interrupted code may be inside a write to stderr.
      os.write(
        2,
        b'Interrupted again: stopped at once, without saving; the last complete '
        b'checkpoint is kept.\n',
      )
      os._exit(128 + signal.SIGINT)  # pylint: disable=protected-access
    if signum == signal.SIGINT:
      logging.warning(
        'Interrupted (Ctrl-C): saving a checkpoint and stopping after this step; '
        'press Ctrl-C again to stop at once without saving.'
      )
    else:
      logging.warning('SIGTERM received: saving a checkpoint and stopping after this step.')

  @property
  def triggered(self) -> bool:
    return self.event.is_set()

  def restore(self) -> None:
    for signum, previous in self._previous.items():
      if previous is not None:  # None: a handler installed outside Python
        signal.signal(signum, previous)
    self._previous = {}
