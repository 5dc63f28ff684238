"""Training metrics: TensorBoard summaries, a JSON-lines history and a console progress bar.

Only process 0 writes (summaries, history, console); the other processes get a writer that
does nothing, so the training loop calls the same methods everywhere.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any
from typing import Mapping
from typing import Optional

import jax
import numpy as np
from absl import logging

HISTORY_FILE = 'metrics.jsonl'


def _to_float(v: Any) -> float:
  return float(np.asarray(jax.device_get(v)))


class MetricWriter:
  """Scalars to TensorBoard (`<workdir>/tensorboard`) and `<workdir>/metrics.jsonl`.

  Without TensorFlow (which flax's TensorBoard writer imports) only metrics.jsonl is written,
  with a warning.

  `truncate_after(step)` drops history rows past a resumed checkpoint, so a restarted run's
  history equals an uninterrupted one's.
  """

  def __init__(self, workdir: str, *, enabled: Optional[bool] = None, tensorboard: bool = True):
    self.enabled = (jax.process_index() == 0) if enabled is None else enabled
    self.workdir = workdir
    self._tb = None
    self._history_path = os.path.join(workdir, HISTORY_FILE)
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        try:
          from flax.metrics import tensorboard as flax_tb  # pylint: disable=g-import-not-at-top
        except ImportError as e:  # flax's writer needs TensorFlow
          logging.warning(
            'No TensorBoard events in %s/tensorboard (%s); every scalar is in %s.',
            workdir,
            e,
            self._history_path,
          )
        else:
          self._tb = flax_tb.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not os.path.exists(self._history_path):
      return
    rows = read_history(self.workdir)
    with open(self._history_path, 'w') as f:
      for row in rows:
        if row['step'] <= step:
          f.write(json.dumps(row) + '\n')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> dict[str, float]:
    values = {k: _to_float(v) for k, v in scalars.items()}
    if not self.enabled:
      return values
    if self._tb is not None:
      for k, v in values.items():
        self._tb.scalar(k, v, step)
      self._tb.flush()
    with open(self._history_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **values}) + '\n')
    return values

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_history(workdir: str) -> list[dict[str, float]]:
  """Rows of `metrics.jsonl` (one per logged step)."""
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return '?'
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f'{h:d}:{m:02d}:{sec:02d}' if h else f'{m:d}:{sec:02d}'


class Progress:
  """A console progress bar with steps/s and ETA.

  On a terminal it redraws one line; otherwise (logs, CI) it prints a line at each `update`
  call that carries metrics, so log files stay readable.
  """

  def __init__(
    self,
    total_steps: int,
    start_step: int = 0,
    *,
    enabled: Optional[bool] = None,
    stream=None,
    width: int = 24,
    unit: str = 'step',
  ):
    self.total = max(int(total_steps), 1)
    self.start = int(start_step)
    self.enabled = (jax.process_index() == 0) if enabled is None else enabled
    self.stream = stream or sys.stdout
    self.width = width
    self.unit = unit
    self.t0 = time.time()
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._last_draw = 0.0

  def eta(self, step: int) -> float:
    done = step - self.start
    if done <= 0:
      return float('inf')
    rate = done / max(time.time() - self.t0, 1e-9)
    return (self.total - step) / rate

  def line(self, step: int, metrics: Optional[Mapping[str, float]] = None) -> str:
    frac = min(step / self.total, 1.0)
    filled = int(round(frac * self.width))
    bar = '#' * filled + '.' * (self.width - filled)
    elapsed = time.time() - self.t0
    rate = (step - self.start) / max(elapsed, 1e-9)
    text = (
      f'[{bar}] {step}/{self.total} {100 * frac:5.1f}% {rate:.2f} {self.unit}/s '
      f'elapsed {format_seconds(elapsed)} ETA {format_seconds(self.eta(step))}'
    )
    if metrics:
      keys = [k for k in ('loss', 'loss_f', 'loss_c', 'loss_temp', 'learning_rate') if k in metrics]
      text += ' ' + ' '.join(f'{k} {metrics[k]:.4g}' for k in keys)
    return text

  def update(self, step: int, metrics: Optional[Mapping[str, float]] = None) -> None:
    if not self.enabled:
      return
    now = time.time()
    if self.tty:
      if metrics is None and now - self._last_draw < 0.5 and step < self.total:
        return
      self.stream.write('\r' + self.line(step, metrics) + '\x1b[K')
      self.stream.flush()
      self._last_draw = now
    elif metrics is not None:
      self.stream.write(self.line(step, metrics) + '\n')
      self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.tty:
      self.stream.write('\n')
      self.stream.flush()


def log_info(msg: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(msg, *args)
