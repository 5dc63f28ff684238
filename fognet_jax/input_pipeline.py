"""Paired clean/foggy batch iterators, training and evaluation, per process, on Grain.

The dataset comes from ``records`` (random access to a prepared ``tfds_fogact`` dataset's
ArrayRecord files, the videos left encoded, the fog / perspective filters); every example
is turned into a training pair or evaluation views by ``augment`` (sampling, crops,
colour, decoding). Each iterator is a Grain pipeline: a ``grain.MapDataset`` of this
process's sample numbers, mapped to examples, batched and read ahead by `num_workers`
workers of `worker_type` (the config's ``perf.num_workers`` / ``perf.worker_type``):

* ``'thread'``: threads of this process (``grain.ReadOptions``), one example each, up to
  ``prefetch + 1`` batches of examples in flight; the batch is stacked when taken.
* ``'process'``: spawned processes (``mp_prefetch``); each makes whole batches (batch i
  in worker ``i mod num_workers``), which come back in shared memory.

Both give the same batches: the batch contents never depend on the workers.

Training (``train_iterator``): determinism and resume: global sample
``g = step * B * P + process * B + j`` (B per-process batch, P processes) is example
``perm_e[g mod N]`` of epoch ``e = g // N`` (``perm_e`` a permutation seeded by
(seed, e)), augmented with a generator seeded by (seed, g). Batch i is therefore a
pure function of (config, seed, i, process index, process count): ``start_step``
skips to it without replaying, as does the iterator's Grain state (``get_state`` /
``set_state``), and the processes of one step read disjoint examples that together
are the step's global batch, whatever the process count.

Evaluation (``eval_iterator``): single-stream views of the foggy clips (or, with
``stream='clean'``, of the clean ones: ``config.eval.stream``), of the examples that
pass the eval filters (``data.eval_fog`` / ``data.eval_perspective``; the training
filters never apply here). Examples are split into contiguous per-process chunks;
every process yields the same number of batches, the last ones padded (``mask`` False).
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Optional

import grain
import jax
import numpy as np
from absl import flags

from fognet_jax import augment
from fognet_jax import records

WORKER_TYPES = ('thread', 'process')
# Per-process training samples of an iterator: endless for any run (2**48 / batch steps).
_ENDLESS = 1 << 48
_CACHED_STEPS = 64  # sample ids of this many steps kept, for the examples of one step
_PROFILING_FLAG = 'grain_enable_multiprocess_worker_profiling'


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 7]).permutation(n)


def train_sample_ids(
  num_examples: int,
  *,
  batch_size: int,
  seed: int,
  step: int,
  process_index: int,
  process_count: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(global sample numbers g, positions into the filtered index list) of one batch."""
  g = (
    step * batch_size * process_count
    + process_index * batch_size
    + np.arange(batch_size, dtype=np.int64)
  )
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


class _Item:
  """Base of the per-sample functions: picklable (for process workers); an example that
  fails to load names itself in the error."""

  def __init__(self, source, data_cfg, split: Optional[str], pixels_on_device: bool):
    self.source, self.data_cfg, self.pixels_on_device = source, data_cfg, pixels_on_device
    self.where = (
      'the given source'
      if split is None
      else f'config.data.dataset {data_cfg.dataset!r}, split {split!r}'
    )

  def load(self, index: int, *args):
    """``self.make(example, *args)`` of example `index`, errors naming the example."""
    try:
      return self.make(self.source[index], *args)
    except MemoryError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{self.where}: example {index}: {type(e).__name__}: {e}') from e


class _TrainItem(_Item):
  """Per-process sample number k (row k % B of step k // B) -> one training pair."""

  def __init__(
    self,
    source,
    data_cfg,
    split,
    *,
    indices: np.ndarray,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    swap: np.ndarray,
    pixels_on_device: bool = False,
  ):
    super().__init__(source, data_cfg, split, pixels_on_device)
    self.indices, self.batch_size, self.seed = indices, batch_size, seed
    self.process_index, self.process_count, self.swap = process_index, process_count, swap
    self._init_cache()

  def _init_cache(self):
    self._lock = threading.Lock()
    self._steps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    del state['_lock'], state['_steps']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_cache()

  def sample(self, k: int) -> tuple[int, int]:
    """(global sample number g, example index) of per-process sample k."""
    step, row = divmod(k, self.batch_size)
    with self._lock:  # the rows of one step share their ids, computed once
      ids = self._steps.get(step)
      if ids is None:
        g, pos = train_sample_ids(
          len(self.indices),
          batch_size=self.batch_size,
          seed=self.seed,
          step=step,
          process_index=self.process_index,
          process_count=self.process_count,
        )
        ids = self._steps[step] = (g, self.indices[pos])
        if len(self._steps) > _CACHED_STEPS:
          del self._steps[min(self._steps)]
    return int(ids[0][row]), int(ids[1][row])

  def __call__(self, k: int) -> dict:
    g, index = self.sample(k)
    return self.load(index, g)

  def make(self, ex, g: int) -> dict:
    rng = np.random.default_rng([self.seed, g, 13])
    if self.pixels_on_device:
      clean, foggy, cj, flipped = augment.sample_train_pair(ex, self.data_cfg, rng)
      item = {'clean': clean, 'foggy': foggy, 'color': augment.color_affines(cj)}
    else:
      clean, foggy, flipped = augment.make_train_pair(ex, self.data_cfg, rng, return_flip=True)
      item = {'clean': clean, 'foggy': foggy}
    label = int(ex['label'])
    if flipped and label < len(self.swap):
      label = int(self.swap[label])
    item['label'] = np.int32(label)
    return item


class _EvalItem(_Item):
  """Per-process row k -> {'frames': views of one stream, 'label', 'mask'}; rows past this
  process's examples are padding (zeros, ``mask`` False)."""

  def __init__(
    self,
    source,
    data_cfg,
    split,
    *,
    indices: np.ndarray,
    stream: str,
    pixels_on_device: bool = False,
  ):
    super().__init__(source, data_cfg, split, pixels_on_device)
    self.indices, self.stream = indices, stream

  def __call__(self, k: int) -> dict:
    if k < len(self.indices):
      return self.load(int(self.indices[k]))
    d = self.data_cfg
    shape = (d.num_clips * d.num_crops, d.num_frames, d.image_size, d.image_size, 3)
    return {
      'frames': np.zeros(shape, _frame_dtype(self.pixels_on_device)),
      'label': np.int32(0),
      'mask': np.bool_(False),
    }

  def make(self, ex) -> dict:
    views = augment.make_eval_views(
      ex, self.data_cfg, stream=self.stream, uint8=self.pixels_on_device
    )
    return {'frames': views, 'label': np.int32(ex['label']), 'mask': np.bool_(True)}


def _init_worker(worker_index: int, worker_count: int) -> None:
  """Start of a worker process: Ctrl-C is the parent's to handle, and the worker never
  touches an accelerator."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # The worker only decodes and augments with NumPy / PIL; should anything call into jax
  # there, it must not claim the accelerator the parent trains on.
  jax.config.update('jax_platforms', 'cpu')


class Batches:
  """The iterator of a pipeline's batches: a Grain ``DatasetIterator`` (``get_state`` /
  ``set_state`` / ``close``) whose errors name what to change."""

  def __init__(self, iterator, worker_type: str):
    self._it, self._worker_type = iterator, worker_type

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    try:
      return next(self._it)
    except RuntimeError as e:
      if self._worker_type == 'process' and 'terminated unexpectedly' in str(e):
        raise RuntimeError(
          "an input-pipeline worker process died (config.perf.worker_type='process'): killed "
          '(e.g. out of memory: fewer config.perf.num_workers), or it failed to start. Workers '
          'are spawned and import the main module again: a script that starts training when '
          "imported needs `if __name__ == '__main__':`. config.perf.worker_type='thread' runs "
          'the workers as threads'
        ) from e
      raise

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state) -> None:
    self._it.set_state(state)

  def close(self) -> None:
    self._it.close()


def _grain_flag_defaults() -> None:
  """Gives Grain's worker-profiling flag its default when absl has not parsed the command
  line (a program not started by ``absl.app``: tests, notebooks, benchmarks): Grain 0.2.x
  reads it when it starts worker processes, which raises before parsing."""
  flag = flags.FLAGS[_PROFILING_FLAG] if _PROFILING_FLAG in flags.FLAGS else None
  if flag is not None and not flags.FLAGS.is_parsed() and not flag.present:
    flag.parse(flag.default)


def _loader(
  samples: grain.MapDataset, item, batch_size: int, *, kind: str, workers: int, prefetch: int
) -> Batches:
  """`samples` mapped by `item`, in batches of `batch_size`, by `workers` workers of `kind`
  with `prefetch` batches prepared ahead."""
  if kind not in WORKER_TYPES:
    raise ValueError(f'config.perf.worker_type must be one of {WORKER_TYPES}, got {kind!r}')
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise ValueError(f'config.perf.num_workers must be an integer >= 1, got {workers!r}')
  if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
    raise ValueError(f'config.perf.prefetch must be an integer >= 0, got {prefetch!r}')
  examples = samples.map(item)
  if kind == 'thread':
    ahead = max((prefetch + 1) * batch_size, workers)
    ds = examples.to_iter_dataset(
      grain.ReadOptions(num_threads=workers, prefetch_buffer_size=ahead)
    ).batch(batch_size)
  else:  # whole batches per worker: which examples form a batch never depends on the workers
    ds = examples.batch(batch_size).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, -(-prefetch // workers))
      ),
      worker_init_fn=_init_worker,
    )
    _grain_flag_defaults()
  return Batches(iter(ds), kind)


def perf_options(perf) -> dict:
  """The iterators' keyword arguments from a config's ``perf`` block: where the per-pixel
  work runs and the workers that read ahead."""
  return dict(
    pixels_on_device=perf.pixels_on_device,
    worker_type=perf.worker_type,
    num_workers=perf.num_workers,
    prefetch=perf.prefetch,
  )


def train_iterator(
  data_cfg,
  *,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: Optional[int] = None,
  process_count: Optional[int] = None,
  source=None,
  pixels_on_device: bool = False,
  worker_type: str = 'thread',
  num_workers: int = 4,
  prefetch: int = 2,
) -> Batches:
  """Endless iterator of per-process training batches, from step `start_step` on.

  Yields {'clean': (B, T, S, S, 3), 'foggy': same, 'label': (B,) int32}: with
  `pixels_on_device` (the config's ``perf.pixels_on_device``), uint8 frames and 'color':
  (B, COLOR_STEPS, 3, 4) float32, the pairs' colour jitter and normalisation for ``pixels.train_inputs`` (in the train step);
  otherwise float32 frames, jittered and CLIP-normalised here.
  `process_index` / `process_count` default to ``jax.process_index()`` /
  ``jax.process_count()``; `source` (a sequence of examples with encoded
  'clean' / 'foggy' frame lists and 'label') replaces the dataset, for tests.
  `worker_type`, `num_workers` and `prefetch` (the config's ``perf`` keys of those names)
  choose the workers that read ahead; they never change the batches.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  pi, pc = _process(process_index, process_count)
  named_split = None if source is not None else data_cfg.train_split
  if source is None:
    info = records.prepare(data_cfg)
    source = records.source(data_cfg, data_cfg.train_split)
    indices = records.indices(data_cfg, data_cfg.train_split, 'train')
    swap = augment.flip_table(
      data_cfg, info.class_names, getattr(type(info.builder), 'MIRROR_CLASS_PAIRS', ())
    )
  else:
    indices = np.arange(len(source))
    swap = augment.flip_table(data_cfg, None)
  if len(indices) == 0:
    raise ValueError('config.data: the training split is empty after filtering')
  item = _TrainItem(
    source,
    data_cfg,
    named_split,
    indices=indices,
    batch_size=batch_size,
    seed=seed,
    process_index=pi,
    process_count=pc,
    swap=swap,
    pixels_on_device=pixels_on_device,
  )
  samples = grain.MapDataset.range(start_step * batch_size, _ENDLESS)
  return _loader(
    samples, item, batch_size, kind=worker_type, workers=num_workers, prefetch=prefetch
  )


def eval_process_range(
  num_examples: int, process_index: int, process_count: int
) -> tuple[int, int]:
  """Contiguous [start, stop) of the examples a process evaluates."""
  per = math.ceil(num_examples / process_count)
  return min(num_examples, process_index * per), min(num_examples, (process_index + 1) * per)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches every process yields (the same on all processes)."""
  return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def eval_iterator(
  data_cfg,
  *,
  split: Optional[str] = None,
  batch_size: int,
  process_index: Optional[int] = None,
  process_count: Optional[int] = None,
  source=None,
  stream: str = 'foggy',
  pixels_on_device: bool = False,
  worker_type: str = 'thread',
  num_workers: int = 4,
  prefetch: int = 2,
) -> Batches:
  """Finite iterator of single-stream evaluation batches.

  Yields {'frames': (B, V, T, S, S, 3), 'label': (B,) int32, 'mask': (B,) bool} (the frames
  uint8 with `pixels_on_device`, normalised by ``pixels.model_input`` in the eval
  step; else float32 CLIP-normalised), V = num_clips * num_crops. 'frames' holds the views
  of `stream` ('foggy', or 'clean' for a clean-test row); the other stream is never decoded.
  `worker_type` / `num_workers` / `prefetch`: the workers, as for ``train_iterator``.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if stream not in augment.STREAMS:
    raise ValueError(f'stream must be one of {augment.STREAMS}, got {stream!r}')
  split = split or data_cfg.eval_split
  pi, pc = _process(process_index, process_count)
  named_split = None if source is not None else split  # for errors: a given source has none
  if source is None:
    records.prepare(data_cfg)
    source = records.source(data_cfg, split)
    indices = records.indices(data_cfg, split, 'eval')
  else:
    indices = np.arange(len(source))
  start, stop = eval_process_range(len(indices), pi, pc)
  item = _EvalItem(
    source,
    data_cfg,
    named_split,
    indices=indices[start:stop],
    stream=stream,
    pixels_on_device=pixels_on_device,
  )
  rows = num_eval_batches(len(indices), batch_size, pc) * batch_size
  return _loader(
    grain.MapDataset.range(rows),
    item,
    batch_size,
    kind=worker_type,
    workers=num_workers,
    prefetch=prefetch,
  )
