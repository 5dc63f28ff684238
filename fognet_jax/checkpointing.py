"""Orbax checkpoints in `<workdir>/checkpoints`: periodic saves, keep-N, resume, SIGTERM save.

A checkpoint holds the whole train state (step, parameters, other model variables, optimizer
state). Data order and step randomness are functions of (seed, step), so restoring the state
of step s and restarting the input pipeline at s continues exactly as an uninterrupted run.
Arrays are restored directly into their target shardings (replicated or FSDP).
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


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
    """Restores into the structure, dtypes and shardings of `template` (a live state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint of step {step} in {self.directory} '
                              f'(have {self.all_steps()})')
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template))))
    except (ValueError, KeyError) as e:
      raise ValueError(f'checkpoint {self.directory}/{step} does not match the configured model '
                       f'(different backbone or switches?): {e}') from e
    logging.info('Restored checkpoint of step %d from %s', step, self.directory)
    return _from_saveable(restored['state'], template)

  def reached_preemption(self, step: int) -> bool:
    """True when JAX's multi-host preemption service saw a preemption notice (TPU pods)."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # pylint: disable=broad-except
      return False

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
