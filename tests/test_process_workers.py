"""Process workers of the input pipeline (``config.data.worker_type='process'``).

They must give the thread workers' batches exactly (the batches are a pure function of the
config, seed and step), read a prepared dataset through a source that pickles, return large
arrays through shared memory (or the pipe when there is no room), report a worker's exception
and a dead worker in the parent, and never claim the accelerator.
"""
import concurrent.futures
import io
import json
import os
import pickle
import re

import jax
from jax._src import xla_bridge
import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

import config_testutil
from fognet_jax import config_lib
from fognet_jax import input_pipeline as ip
from fognet_jax import records
from fognet_jax import worker_pool
from tfds_fogact import common


def _cfg(**kw):
  c = config_testutil.data_block()
  c.num_frames = 3
  c.image_size = 16
  c.num_workers = 2
  for k, v in kw.items():
    c[k] = v
  return c


def _jpeg(rng):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def _examples(n):
  rng = np.random.default_rng(0)
  return [{"clean": [_jpeg(rng) for _ in range(4)], "foggy": [_jpeg(rng) for _ in range(4)],
           "label": i} for i in range(n)]


def _batches(cfg, kind, *, train_steps=2, start_step=3, source=None, split="test",
             pixels_on_device=True):
  cfg = _cfg(**{**cfg, "worker_type": kind})
  it = ip.train_iterator(cfg, batch_size=4, seed=5, start_step=start_step, process_index=1,
                         process_count=2, source=source, pixels_on_device=pixels_on_device)
  train = [next(it) for _ in range(train_steps)]
  it.close()
  ev = list(ip.eval_iterator(cfg, split=split, batch_size=3, process_index=0, process_count=1,
                             source=source, pixels_on_device=pixels_on_device))
  return train + ev


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype, k
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("workers")
  (root / "manual").mkdir()
  (root / "manual" / "generation.json").write_text(
      json.dumps({"train_per_group": 1, "test_per_group": 1, "num_frames": 4}))
  cfg = dict(data_dir=str(root / "data"), manual_dir=str(root / "manual"))
  records.prepare(_cfg(**cfg))
  return cfg


@pytest.mark.parametrize("on_device", [True, False])
def test_process_workers_give_the_thread_batches_of_a_prepared_dataset(prepared, on_device):
  cfg = dict(prepared, fog="dense", eval_perspective="front,left")
  threads = _batches(cfg, "thread", pixels_on_device=on_device)
  processes = _batches(cfg, "process", pixels_on_device=on_device)
  _assert_same(threads, processes)
  assert threads[0]["clean"].dtype == (np.uint8 if on_device else np.float32)
  assert sum(int(b["mask"].sum()) for b in threads[2:]) == len(
      records.indices(_cfg(**cfg), "test"))


def test_the_prepared_source_pickles_small_and_reads_the_same_records(prepared):
  src = records.source(_cfg(**prepared), "train")
  data = pickle.dumps(src)
  assert len(data) < 4096  # the ArrayRecord reader, not TFDS's DatasetInfo
  copy = pickle.loads(data)
  # TFDS's own data source of the split hands out the same records
  builder = tfds.builder(_cfg().dataset, data_dir=prepared["data_dir"])
  tfds_source = common.data_source(builder, "train",
                                   deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  assert len(copy) == len(src) == len(tfds_source) > 1
  for i in (0, len(src) - 1):
    parsed = records.EncodedExample(records.tf_example_pb2.Example.FromString(tfds_source[i]))
    assert list(copy[i]["foggy"]) == list(src[i]["foggy"]) == list(parsed["foggy"])
    assert copy[i]["label"] == src[i]["label"] == parsed["label"]
  assert list(copy[0]["foggy"]) != list(copy[1]["foggy"])


def test_an_in_memory_source_goes_to_the_workers():
  src = _examples(6)
  _assert_same(_batches({}, "thread", source=src), _batches({}, "process", source=src))


class _BadFrames:
  """Example 2's foggy frames are not images."""

  def __init__(self):
    self.items = _examples(4)
    self.items[2]["foggy"] = [b"not an image"] * 4

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def _first_error(kind):
  with pytest.raises(Exception) as info:
    list(ip.eval_iterator(_cfg(worker_type=kind), batch_size=2, process_index=0,
                          process_count=1, source=_BadFrames()))
  return info.value


def test_a_worker_exception_reaches_the_caller_as_with_threads():
  in_thread, in_process = _first_error("thread"), _first_error("process")
  assert type(in_process) is type(in_thread) is ValueError
  # the message names the example; PIL's names an in-memory file by its address
  address = re.compile(r"0x[0-9a-f]+")
  assert address.sub("", str(in_process)) == address.sub("", str(in_thread))
  assert str(in_thread).startswith("the given source: example 2: UnidentifiedImageError")


class _Dies:

  def __len__(self):
    return 4

  def __getitem__(self, i):
    os._exit(3)


def test_a_dead_worker_is_reported_with_what_to_do():
  it = ip.train_iterator(_cfg(worker_type="process"), batch_size=2, seed=0, process_index=0,
                         process_count=1, source=_Dies())
  with pytest.raises(RuntimeError, match=r"worker process died.*__main__.*worker_type='thread'"):
    next(it)


def _probe(example):
  """Run in a worker: augment one example, then report what jax set up there."""
  ip._TrainItem([example], _cfg(), None, 0, np.zeros(0, np.int32), pixels_on_device=True)(0, 0)
  return xla_bridge.backends_are_initialized(), jax.config.jax_platforms


def test_workers_do_not_claim_the_accelerator(monkeypatch):
  # as on a GPU host: the worker inherits no platform choice (tests/conftest.py sets cpu)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  pool = worker_pool.Pool(_cfg(worker_type="process", num_workers=1), _probe, max_in_flight=1)
  try:
    assert pool.submit(_examples(1)[0]).result(timeout=120) == (False, "cpu")
  finally:
    pool.shutdown()


def test_worker_type_is_validated():
  with pytest.raises(config_lib.ConfigError, match="data.worker_type"):
    config_lib.validate_data(_cfg(worker_type="processes"))
  with pytest.raises(ValueError, match="config.data.worker_type"):
    next(ip.eval_iterator(_cfg(worker_type="fork"), batch_size=2, process_index=0,
                          process_count=1, source=_examples(2)))


def _result(i, n=300):
  """A result as the pipeline's: large frames, a small array, a scalar, nested."""
  return {"frames": np.full((n, n, 3), i % 251, np.uint8), "color": np.full((5, 3, 4), i, np.float32),
          "label": np.int32(i), "pair": (np.arange(70000, dtype=np.int32) + i, "text")}


def _check(out, i, n=300):
  want = _result(i, n)
  assert out.keys() == want.keys() and out["pair"][1] == "text"
  for got, exp in ((out["frames"], want["frames"]), (out["color"], want["color"]),
                   (out["label"], want["label"]), (out["pair"][0], want["pair"][0])):
    assert got.dtype == exp.dtype and got.shape == exp.shape
    np.testing.assert_array_equal(got, exp)


def _sizes(i):
  return _result(i, 300 if i != 7 else 400)  # result 7 does not fit a slot


def _run(fn, n, *, window=4, max_in_flight=4, while_open=None, **cfg):
  """A pool of `fn` (`cfg` over the test data block) fed n tasks with at most `window` in
  flight, as the iterators do; (the shut-down pool, the results in order).
  `while_open(pool)` runs before the shutdown."""
  pool = worker_pool.Pool(_cfg(**cfg), fn, max_in_flight=max_in_flight)
  try:
    pending, out = [], []
    for i in range(n):
      pending.append(pool.submit(i))
      if len(pending) == window:
        out.append(pending.pop(0).result(timeout=120))
    out += [f.result(timeout=120) for f in pending]
    if while_open:
      while_open(pool)
  finally:
    pool.shutdown()
  return pool, out


def test_large_arrays_come_back_through_shared_memory():
  names = []

  def block_exists(pool):
    names.append(pool._block.name)
    assert os.path.exists(f"/dev/shm/{names[0]}")

  pool, out = _run(_result, 16, worker_type="process", while_open=block_exists)
  for i, o in enumerate(out):
    _check(o, i)
  # the first result sets the slot size; the ones submitted before it came back used the pipe
  assert pool.transfers["pipe"] <= 4 and pool.transfers["shared"] >= 12
  assert sum(pool.transfers.values()) == 16
  assert not os.path.exists(f"/dev/shm/{names[0]}")


def test_a_result_larger_than_a_slot_takes_the_pipe():
  pool, out = _run(_sizes, 10, window=2, max_in_flight=2, worker_type="process", num_workers=1)
  for i, o in enumerate(out):
    _check(o, i, 300 if i != 7 else 400)
  assert pool.transfers["shared"] >= 7 and pool.transfers["pipe"] >= 2


@pytest.mark.parametrize("room, says", [(1 << 20, "/dev/shm has 1 MB free"),
                                        (None, "/dev/shm cannot be read")])
def test_without_room_in_dev_shm_the_pipe_carries_everything(monkeypatch, caplog, room, says):
  monkeypatch.setattr(worker_pool, "_shm_room", lambda: room)
  with caplog.at_level("WARNING"):
    pool, out = _run(_result, 6, max_in_flight=8, worker_type="process")
  for i, o in enumerate(out):
    _check(o, i)
  assert pool.transfers == {"shared": 0, "pipe": 6}
  assert says in caplog.text and "config.data.prefetch" in caplog.text


def test_thread_workers_return_the_results_themselves():
  pool, out = _run(_result, 5, worker_type="thread")
  for i, o in enumerate(out):
    _check(o, i)
  assert pool.transfers == {"shared": 0, "pipe": 0}


def _stack(items):
  return {"frames": np.stack([it["frames"] for it in items]), "label": [it["label"] for it in items]}


def _first_frames(items):
  """A collate that passes a result's array through instead of copying it."""
  return {"frames": items[0]["frames"], "label": [it["label"] for it in items]}


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_collate_reads_slots_in_place_and_returns_arrays_of_its_own(kind):
  pool = worker_pool.Pool(_cfg(worker_type=kind), _result, max_in_flight=8)
  try:
    for b in range(4):  # batch 0 opens the block (its results take the pipe), then slots
      futures = [pool.submit(4 * b + j) for j in range(4)]
      batch = pool.collate(futures, _stack if b % 2 == 0 else _first_frames)
      if kind == "process" and b > 0:
        assert pool._block is not None and len(pool._free) == 9  # every slot free again
        assert not np.may_share_memory(batch["frames"], pool._block_view)
      want = (np.stack([_result(4 * b + j)["frames"] for j in range(4)]) if b % 2 == 0
              else _result(4 * b)["frames"])
      np.testing.assert_array_equal(batch["frames"], want)
      assert batch["label"] == [4 * b + j for j in range(4)]
      # the slots are reused by the next batch: what came out must not change with them
      keep = np.array(batch["frames"])
      pool.collate([pool.submit(99) for _ in range(4)], _stack)
      np.testing.assert_array_equal(batch["frames"], keep)
    if kind == "process":
      assert pool.transfers["shared"] >= 24
  finally:
    pool.shutdown()


@pytest.mark.parametrize("on_device", [True, False])
def test_the_iterators_size_the_slots_from_the_config(monkeypatch, on_device):
  """Every process result takes a shared-memory slot, the first ones too: the iterators give
  the pool the size of a result before any came back."""
  pools = []

  class Recording(worker_pool.Pool):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      pools.append(self)

  monkeypatch.setattr(worker_pool, "Pool", Recording)
  # 3 frames of 96^2: 83 KB a stream in uint8, above worker_pool.MIN_SHARED_BYTES
  batches = _batches(dict(image_size=96), "process", source=_examples(8),
                     pixels_on_device=on_device)
  assert len(pools) == 2 and len(batches) == 2 + 3
  train, ev = pools
  assert train.transfers == {"shared": 2 * 4, "pipe": 0}  # 2 batches of 4 (no prefetch left)
  assert ev.transfers == {"shared": 8, "pipe": 0}


def _mmapped_bytes_of_a_2mb_array():
  """In a fresh process: bytes glibc maps anew (mallinfo2().hblkhd) for one 2 MB array."""
  import ctypes  # pylint: disable=g-import-not-at-top
  fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")

  class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in fields]

  libc = ctypes.CDLL("libc.so.6")
  libc.mallinfo2.restype = Info
  before = libc.mallinfo2().hblkhd
  x = np.ones(1 << 18)  # 2 MB
  return int(libc.mallinfo2().hblkhd - before), float(x.sum())


def _in_fresh_process(fn, *, worker):
  """fn() in a new spawned process: a pool worker (its initializer ran) or a bare process."""
  if worker:
    pool = worker_pool.Pool(_cfg(worker_type="process", num_workers=1), fn, max_in_flight=1)
    try:
      return pool.submit().result(timeout=120)
    finally:
      pool.shutdown()
  import multiprocessing  # pylint: disable=g-import-not-at-top
  with concurrent.futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn")) as bare:
    return bare.submit(fn).result(timeout=120)


def test_workers_serve_frame_arrays_from_the_heap():
  """A worker allocates and frees the same few MB per example; glibc's defaults map each such
  array anew (and fault its pages in again). Workers raise the mmap threshold instead."""
  mapped, _ = _in_fresh_process(_mmapped_bytes_of_a_2mb_array, worker=False)
  assert mapped >= 1 << 21  # glibc's default: a fresh mapping (the probe can see it)
  mapped, _ = _in_fresh_process(_mmapped_bytes_of_a_2mb_array, worker=True)
  assert mapped == 0
