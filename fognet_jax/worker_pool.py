"""The input pipeline's workers: threads, or spawned processes that return frames through
shared memory.

``Pool(data_cfg, fn, max_in_flight, item_bytes=None)`` runs ``fn(*args)`` per example in
``data_cfg.num_workers`` workers of ``data_cfg.worker_type``:

* ``'thread'``: a thread pool. Starts at once, shares memory; the Python parts of reading and
  sampling hold the GIL, which bounds what one process's threads can feed.
* ``'process'``: spawned processes. Each gets `fn` once, pickled (the dataset source pickles
  as its ArrayRecord reader, ``records.EncodedSource``), imports the package (seconds) and
  holds its own memory. A result's large arrays (the frames) come back through one
  shared-memory block of ``max_in_flight + 1`` slots owned by the pool: the worker writes
  them into the slot its task was given and returns their places. ``Pool.collate`` hands
  them, in place, to the function that stacks a batch, and frees the slots once it has
  copied them: one copy in the main process. The rest of a result, and everything when
  shared memory is not available (no room in /dev/shm, as in containers with the default
  64 MB; a result larger than a slot), goes through the pipe. The slot size is
  ``item_bytes`` when the caller knows it (the input pipeline computes it from the config:
  every result takes a slot from the first); otherwise the first result sets it, and the
  results submitted before it came back take the pipe.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
from multiprocessing import shared_memory
import os
import signal
from typing import NamedTuple, Optional

import jax
import numpy as np

WORKER_TYPES = ("thread", "process")
MIN_SHARED_BYTES = 1 << 16  # smaller arrays go through the pipe with the rest of the result
_ALIGN = 64

_WORKER_FN = None  # in a worker process: the per-example function of its pool
_ATTACHED: dict[str, shared_memory.SharedMemory] = {}  # in a worker process: blocks by name


def _keep_freed_memory() -> None:
  """glibc: serve the frame arrays from the heap and keep freed memory there.

  A worker allocates and frees the same few MB for every example. With glibc's defaults, each
  such array is a fresh mapping, or the heap is trimmed under it, and every page is faulted in
  again: about 1000 page faults and 2 ms of system time per training pair at 8 x 224^2, 11 %
  of the worker's time (docs/perf_notes.md, "Worker processes"). Not glibc: nothing.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays up to 32 MB from the heap
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MB freed at its top
  except (OSError, AttributeError):
    pass


def _init_worker(fn) -> None:
  """Initializer of a worker process: keeps `fn`; the worker never touches an accelerator."""
  global _WORKER_FN
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
  _keep_freed_memory()
  # The worker only decodes and augments with NumPy / PIL; should anything call into jax
  # here, it must not claim the accelerator the parent trains on.
  jax.config.update("jax_platforms", "cpu")
  _WORKER_FN = fn


class _Shared(NamedTuple):
  """Where an array of a result lies in the pool's shared block."""
  offset: int
  shape: tuple
  dtype: str


def _aligned(n: int) -> int:
  return -(-n // _ALIGN) * _ALIGN


def _map(tree, leaf):
  if isinstance(tree, dict):
    return {k: _map(v, leaf) for k, v in tree.items()}
  if isinstance(tree, (tuple, list)) and not isinstance(tree, _Shared):
    return type(tree)(_map(v, leaf) for v in tree)
  return leaf(tree)


def _large(x) -> bool:
  return isinstance(x, np.ndarray) and x.nbytes >= MIN_SHARED_BYTES and x.dtype != object


def shared_bytes(result) -> int:
  """Bytes (aligned) the large arrays of a result take in a slot."""
  total = [0]

  def count(x):
    if _large(x):
      total[0] += _aligned(x.nbytes)
    return x

  _map(result, count)
  return total[0]


def _call_worker_fn(slot: Optional[tuple[str, int, int]], *args):
  """In a worker: `fn(*args)`, its large arrays written to `slot` (block name, offset, size)."""
  result = _WORKER_FN(*args)
  if slot is None:
    return result
  name, start, size = slot
  if shared_bytes(result) > size:
    return result  # does not fit: the pipe
  block = _ATTACHED.get(name)
  if block is None:
    block = _ATTACHED[name] = shared_memory.SharedMemory(name=name)
  pos = [start]

  def put(x):
    if not _large(x):
      return x
    np.ndarray(x.shape, x.dtype, buffer=block.buf, offset=pos[0])[...] = x
    where = _Shared(pos[0], x.shape, x.dtype.str)
    pos[0] += _aligned(x.nbytes)
    return where

  return _map(result, put)


def _shm_room() -> Optional[int]:
  try:
    st = os.statvfs("/dev/shm")
  except OSError:
    return None
  return st.f_bavail * st.f_frsize


class _Result:
  """A process worker's future: `result()` copies the arrays out of the slot and frees it
  (``Pool.collate`` reads them in place instead)."""

  def __init__(self, pool: "Pool", future: concurrent.futures.Future, slot: Optional[int]):
    self._pool, self._future, self._slot = pool, future, slot

  def result(self, timeout: Optional[float] = None):
    try:
      return self._pool._received(self._future.result(timeout))  # pylint: disable=protected-access
    finally:  # copied out (or failed): the slot may take the next result
      self._release()

  def _release(self) -> None:
    if self._slot is not None:
      self._pool._free.append(self._slot)  # pylint: disable=protected-access
      self._slot = None


class Pool:
  """`num_workers` threads or processes running `fn(*args)`; see the module docstring.

  `max_in_flight`: the most results submitted and not yet taken at any time (the shared
  block holds one slot more). `item_bytes`: ``shared_bytes`` of one result, if known.
  """

  def __init__(self, data_cfg, fn, max_in_flight: int, item_bytes: Optional[int] = None):
    kind = data_cfg.get("worker_type", "thread")
    if kind not in WORKER_TYPES:
      raise ValueError(f"config.data.worker_type must be one of {WORKER_TYPES}, got {kind!r}")
    self.kind = kind
    self.transfers = {"shared": 0, "pipe": 0}  # how process results came back
    self._slots = max_in_flight + 1
    self._block: Optional[shared_memory.SharedMemory] = None
    self._block_view: Optional[np.ndarray] = None  # the whole block, for np.may_share_memory
    self._slot_bytes = 0
    self._free: list[int] = []
    self._tried_shared = False
    if kind == "thread":
      self._pool = concurrent.futures.ThreadPoolExecutor(data_cfg.num_workers)
      self._fn = fn
    else:
      self._pool = concurrent.futures.ProcessPoolExecutor(
          data_cfg.num_workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_init_worker, initargs=(fn,))
      if item_bytes is not None:
        self._tried_shared = True
        self._open_block(item_bytes)

  def submit(self, *args):
    """A future of `fn(*args)` (one with ``result()``)."""
    if self.kind == "thread":
      return self._pool.submit(self._fn, *args)
    slot = self._free.pop() if self._free else None
    where = None if slot is None else (self._block.name, slot * self._slot_bytes, self._slot_bytes)
    return _Result(self, self._pool.submit(_call_worker_fn, where, *args), slot)

  def collate(self, futures, collate):
    """``collate([f.result() for f in futures])`` for futures of this pool's `submit`.

    `collate` must copy the arrays of the results into its own (``np.stack`` does): a process
    result's shared arrays are handed to it in place, views into their slots, which are freed
    once it returns. One copy per frame fewer than ``result()``'s. An output array that still
    lies in the shared block is copied out before the slots are freed.
    """
    if self.kind == "thread":
      return collate([f.result() for f in futures])
    taken = []
    try:
      items = []
      for f in futures:
        out = f._future.result()  # pylint: disable=protected-access
        taken.append(f)  # its worker is done with the slot
        items.append(self._received(out, copy=False))
      return _map(collate(items), self._owned)
    finally:
      for f in taken:
        f._release()  # pylint: disable=protected-access

  def _owned(self, x):
    """`x`, or a copy of it if its memory lies in the shared block."""
    if (self._block is not None and isinstance(x, np.ndarray)
        and np.may_share_memory(x, self._block_view)):
      return np.array(x)
    return x

  def _received(self, out, copy: bool = True):
    if not self._tried_shared:
      self._tried_shared = True
      self._open_block(shared_bytes(out))
    shared = [False]

    def take(x):
      if not isinstance(x, _Shared):
        return x
      shared[0] = True
      view = np.ndarray(x.shape, np.dtype(x.dtype), buffer=self._block.buf, offset=x.offset)
      return np.array(view) if copy else view

    out = _map(out, take)
    self.transfers["shared" if shared[0] else "pipe"] += 1
    return out

  def _open_block(self, item_bytes: int) -> None:
    """The shared block of `item_bytes` per slot, the size given to the pool or that of the
    first result (no block when 0, or without room in /dev/shm)."""
    if item_bytes == 0:
      return
    size = item_bytes * self._slots
    room = _shm_room()
    if room is None or room < 2 * size:
      have = "cannot be read" if room is None else f"has {room >> 20} MB free"
      logging.warning(
          "input pipeline: /dev/shm %s, under twice the %d MB that %d in-flight results need; "
          "worker processes send their frames through a pipe (slower). Give the container "
          "more shared memory (e.g. docker --shm-size) or lower config.data.prefetch.",
          have, size >> 20, self._slots)
      return
    try:
      self._block = shared_memory.SharedMemory(create=True, size=size)
    except OSError as e:
      logging.warning("input pipeline: no shared memory block of %d MB (%s); worker processes "
                      "send their frames through a pipe.", size >> 20, e)
      return
    self._slot_bytes = item_bytes
    self._block_view = np.ndarray((size,), np.uint8, buffer=self._block.buf)
    self._free = list(range(self._slots))

  def shutdown(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
    if self._block is not None:
      block, self._block, self._free = self._block, None, []
      self._block_view = None
      try:
        block.close()
      except BufferError:  # an array still views it; the unlink below still frees the name
        pass
      block.unlink()
