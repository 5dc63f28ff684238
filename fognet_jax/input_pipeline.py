"""Paired clean/foggy batch iterators: training and evaluation, per process.

The dataset comes from ``records`` (random access to a prepared ``tfds_fogact``
dataset with the videos left encoded, the fog / perspective filters); every
example is turned into a training pair or evaluation views by ``augment``
(sampling, crops, colour, decoding). Examples are processed by ``num_workers`` workers,
``prefetch`` batches ahead: threads, or with ``data.worker_type='process'`` spawned
processes (``worker_pool``). Both give the same batches.

Training (``train_iterator``): determinism and resume: global sample
``g = step * B * P + process * B + j`` (B per-process batch, P processes) is example
``perm_e[g mod N]`` of epoch ``e = g // N`` (``perm_e`` a permutation seeded by
(seed, e)), augmented with a generator seeded by (seed, g). Batch i is therefore a
pure function of (config, seed, i, process index, process count): ``start_step``
skips to it without replaying, and the processes of one step read disjoint
examples.

Evaluation (``eval_iterator``): single-stream views of the foggy clips (or, with
``stream='clean'``, of the clean ones: ``config.eval.stream``), of the examples that
pass the eval filters (``data.eval_fog`` / ``data.eval_perspective``; the training
filters never apply here). Examples are split into
contiguous per-process chunks; every process yields the same number of batches,
the last one padded (``mask`` False).
"""
from __future__ import annotations

import collections
import concurrent.futures.process
import math
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np

from fognet_jax import augment
from fognet_jax import records
from fognet_jax import worker_pool


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 7]).permutation(n)


def train_sample_ids(num_examples: int, *, batch_size: int, seed: int, step: int,
                     process_index: int, process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """(global sample numbers g, positions into the filtered index list) of one batch."""
  g = (step * batch_size * process_count + process_index * batch_size
       + np.arange(batch_size, dtype=np.int64))
  epochs = g // num_examples
  pos = np.empty_like(g)
  for e in np.unique(epochs):
    sel = epochs == e
    pos[sel] = _epoch_permutation(seed, int(e), num_examples)[g[sel] % num_examples]
  return g, pos


def _frame_dtype(pixels_on_device: bool):
  """The frames' dtype in a batch: uint8 with `pixels_on_device` (normalised in the step),
  else float32 (normalised here)."""
  return np.uint8 if pixels_on_device else np.float32


def _prefetched(make_batch, batch_numbers, data_cfg, one, batch_size: int, item: dict):
  """Yields the batches of `batch_numbers`, submitting ``data_cfg.prefetch`` batches ahead to
  a ``worker_pool.Pool`` running `one` per example (shut down when the iterator ends).

  make_batch(i, pool) returns (collate, futures): per-example futures submitted to
  the pool and the function that stacks their results. `item`: the frame arrays of one
  result, unfilled (``np.empty``), for the size of the pool's shared-memory slots.
  """
  prefetch = data_cfg.get("prefetch", 2)
  pool = worker_pool.Pool(data_cfg, one, max_in_flight=(prefetch + 1) * batch_size,
                          item_bytes=worker_pool.shared_bytes(item))
  try:
    yield from _batches(make_batch, batch_numbers, prefetch, pool)
  finally:
    pool.shutdown()


def _batches(make_batch, batch_numbers, prefetch: int, pool):
  pending = collections.deque()
  it = iter(batch_numbers)
  done = False
  while True:
    while not done and len(pending) < prefetch + 1:
      try:
        i = next(it)
      except StopIteration:
        done = True
        break
      pending.append(make_batch(i, pool))
    if not pending:
      return
    collate, futures = pending.popleft()
    try:
      batch = pool.collate(futures, collate)
    except concurrent.futures.process.BrokenProcessPool as e:
      raise RuntimeError(
          "an input-pipeline worker process died (config.data.worker_type='process'): killed "
          "(e.g. out of memory: fewer config.data.num_workers), or it failed to start. Workers "
          "are spawned and import the main module again: a script that starts training when "
          "imported needs `if __name__ == '__main__':`. config.data.worker_type='thread' runs "
          "the workers as threads") from e
    yield batch


class _Item:
  """Base of the per-example functions: picklable (for process workers); an example that
  fails to load names itself in the error."""

  def __init__(self, source, data_cfg, split: Optional[str], pixels_on_device: bool):
    self.source, self.data_cfg, self.pixels_on_device = source, data_cfg, pixels_on_device
    self.where = ("the given source" if split is None
                  else f"config.data.dataset {data_cfg.dataset!r}, split {split!r}")

  def __call__(self, *args):
    try:
      return self.make(*args)
    except MemoryError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{self.where}: example {args[-1]}: {type(e).__name__}: {e}") from e


class _TrainItem(_Item):
  """(global sample number g, example index) -> one training pair."""

  def __init__(self, source, data_cfg, split, seed: int, swap: np.ndarray,
               pixels_on_device: bool = False):
    super().__init__(source, data_cfg, split, pixels_on_device)
    self.seed, self.swap = seed, swap

  def make(self, g: int, index: int) -> dict:
    ex = self.source[index]
    rng = np.random.default_rng([self.seed, g, 13])
    if self.pixels_on_device:
      clean, foggy, cj, flipped = augment.sample_train_pair(ex, self.data_cfg, rng)
      item = {"clean": clean, "foggy": foggy, "color": augment.color_affines(cj)}
    else:
      clean, foggy, flipped = augment.make_train_pair(ex, self.data_cfg, rng, return_flip=True)
      item = {"clean": clean, "foggy": foggy}
    label = int(ex["label"])
    if flipped and label < len(self.swap):
      label = int(self.swap[label])
    item["label"] = np.int32(label)
    return item


class _EvalItem(_Item):
  """Example index -> (evaluation views of one stream, label)."""

  def __init__(self, source, data_cfg, split, stream: str, pixels_on_device: bool = False):
    super().__init__(source, data_cfg, split, pixels_on_device)
    self.stream = stream

  def make(self, index: int):
    ex = self.source[index]
    views = augment.make_eval_views(ex, self.data_cfg, stream=self.stream,
                                    uint8=self.pixels_on_device)
    return views, int(ex["label"])


def train_iterator(data_cfg, *, batch_size: int, seed: int, start_step: int = 0,
                   process_index: Optional[int] = None, process_count: Optional[int] = None,
                   source=None, pixels_on_device: bool = False) -> Iterator[dict]:
  """Infinite iterator of per-process training batches.

  Yields {'clean': (B, T, S, S, 3), 'foggy': same, 'label': (B,) int32}: with
  `pixels_on_device` (the config's ``perf.pixels_on_device``), uint8 frames and 'color':
  (B, COLOR_STEPS, 3, 4) float32, the pairs' colour jitter and normalisation for
  ``pixels.train_inputs`` (in the train step); otherwise float32 frames, jittered and
  CLIP-normalised here.
  `process_index` / `process_count` default to ``jax.process_index()`` /
  ``jax.process_count()``; `source` (a sequence of examples with encoded
  'clean' / 'foggy' frame lists and 'label') replaces the dataset, for tests.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  pi, pc = _process(process_index, process_count)
  named_split = None if source is not None else data_cfg.train_split
  if source is None:
    info = records.prepare(data_cfg)
    source = records.source(data_cfg, data_cfg.train_split)
    indices = records.indices(data_cfg, data_cfg.train_split, "train")
    swap = augment.flip_table(data_cfg, info.class_names, getattr(type(info.builder), "MIRROR_CLASS_PAIRS", ()))
  else:
    indices = np.arange(len(source))
    swap = augment.flip_table(data_cfg, None)
  n = len(indices)
  if n == 0:
    raise ValueError("config.data: the training split is empty after filtering")

  one = _TrainItem(source, data_cfg, named_split, seed, swap, pixels_on_device)
  frames = np.empty((data_cfg.num_frames, data_cfg.image_size, data_cfg.image_size, 3),
                    _frame_dtype(pixels_on_device))

  def collate(items):
    return {k: np.stack([it[k] for it in items]) for k in items[0]}

  def make_batch(step: int, pool):
    g, pos = train_sample_ids(n, batch_size=batch_size, seed=seed, step=step,
                              process_index=pi, process_count=pc)
    return collate, [pool.submit(int(gi), int(indices[p])) for gi, p in zip(g, pos)]

  yield from _prefetched(make_batch, range(start_step, 1 << 62), data_cfg, one, batch_size,
                         {"clean": frames, "foggy": frames})


def eval_process_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous [start, stop) of the examples a process evaluates."""
  per = math.ceil(num_examples / process_count)
  return min(num_examples, process_index * per), min(num_examples, (process_index + 1) * per)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches every process yields (the same on all processes)."""
  return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def eval_iterator(data_cfg, *, split: Optional[str] = None, batch_size: int,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  source=None, stream: str = "foggy",
                  pixels_on_device: bool = False) -> Iterator[dict]:
  """Finite iterator of single-stream evaluation batches.

  Yields {'foggy': (B, V, T, S, S, 3), 'label': (B,) int32, 'mask': (B,) bool} (the frames
  uint8 with `pixels_on_device`, normalised by ``pixels.model_input`` in the eval
  step; else float32 CLIP-normalised),
  V = num_clips * num_crops. 'foggy' holds the views of `stream` ('foggy', or 'clean' for a
  clean-test row); the other stream is never decoded.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if stream not in augment.STREAMS:
    raise ValueError(f"stream must be one of {augment.STREAMS}, got {stream!r}")
  split = split or data_cfg.eval_split
  pi, pc = _process(process_index, process_count)
  named_split = None if source is not None else split  # for errors: a given source has none
  if source is None:
    records.prepare(data_cfg)
    source = records.source(data_cfg, split)
    indices = records.indices(data_cfg, split, "eval")
  else:
    indices = np.arange(len(source))
  start, stop = eval_process_range(len(indices), pi, pc)
  mine = indices[start:stop]
  nb = num_eval_batches(len(indices), batch_size, pc)
  v = data_cfg.num_clips * data_cfg.num_crops
  s, t = data_cfg.image_size, data_cfg.num_frames

  one = _EvalItem(source, data_cfg, named_split, stream, pixels_on_device)
  views = np.empty((v, t, s, s, 3), _frame_dtype(pixels_on_device))  # one example's, unfilled

  def make_batch(b: int, pool):
    chunk = mine[b * batch_size:(b + 1) * batch_size]

    def collate(items):
      foggy = np.zeros((batch_size,) + views.shape, views.dtype)
      label = np.zeros((batch_size,), np.int32)
      mask = np.zeros((batch_size,), bool)
      for k, (x, l) in enumerate(items):
        foggy[k], label[k], mask[k] = x, l, True
      return {"foggy": foggy, "label": label, "mask": mask}

    return collate, [pool.submit(int(i)) for i in chunk]

  yield from _prefetched(make_batch, range(nb), data_cfg, one, batch_size, {"views": views})
