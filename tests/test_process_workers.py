"""Process workers of the input pipeline (``config.perf.worker_type='process'``, Grain's
``mp_prefetch``).

They must give the thread workers' batches exactly (the batches are a pure function of the
config, seed and step, whatever the workers), resume from the iterator's state, read a
prepared dataset through a source that pickles, report a worker's exception and a dead
worker in the parent, and never claim the accelerator.
"""

import io
import json
import os
import pickle
import re

import config_testutil
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax._src import xla_bridge
from PIL import Image

from fognet_jax import config_lib
from fognet_jax import input_pipeline as ip
from fognet_jax import records
from tfds_fogact import common


def _cfg(**kw):
  c = config_testutil.data_block()
  c.num_frames = 3
  c.image_size = 16
  for k, v in kw.items():
    c[k] = v
  return c


def _workers(kind, num_workers=2):
  """The iterators' worker arguments (the config's perf.worker_type / num_workers)."""
  return dict(worker_type=kind, num_workers=num_workers)


def _jpeg(rng):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(buf, format='JPEG')
  return buf.getvalue()


def _examples(n):
  rng = np.random.default_rng(0)
  return [
    {'clean': [_jpeg(rng) for _ in range(4)], 'foggy': [_jpeg(rng) for _ in range(4)], 'label': i}
    for i in range(n)
  ]


def _batches(
  cfg, kind, *, train_steps=2, start_step=3, source=None, split='test', pixels_on_device=True
):
  """Training batches from `start_step` (process 1 of 2), then one pass of evaluation."""
  cfg = _cfg(**cfg)
  it = ip.train_iterator(
    cfg,
    **_workers(kind),
    batch_size=4,
    seed=5,
    start_step=start_step,
    process_index=1,
    process_count=2,
    source=source,
    pixels_on_device=pixels_on_device,
  )
  train = [next(it) for _ in range(train_steps)]
  it.close()
  ev = list(
    ip.eval_iterator(
      cfg,
      **_workers(kind),
      split=split,
      batch_size=3,
      process_index=0,
      process_count=1,
      source=source,
      pixels_on_device=pixels_on_device,
    )
  )
  return train + ev


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype, k
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('workers')
  (root / 'manual').mkdir()
  (root / 'manual' / 'generation.json').write_text(
    json.dumps({'train_per_group': 1, 'test_per_group': 1, 'num_frames': 4})
  )
  cfg = dict(data_dir=str(root / 'data'), manual_dir=str(root / 'manual'))
  records.prepare(_cfg(**cfg))
  return cfg


@pytest.mark.parametrize('on_device', [True, False])
def test_process_workers_give_the_thread_batches_of_a_prepared_dataset(prepared, on_device):
  cfg = dict(prepared, fog='dense', eval_perspective='front,left')
  threads = _batches(cfg, 'thread', pixels_on_device=on_device)
  processes = _batches(cfg, 'process', pixels_on_device=on_device)
  _assert_same(threads, processes)
  assert threads[0]['clean'].dtype == (np.uint8 if on_device else np.float32)
  assert sum(int(b['mask'].sum()) for b in threads[2:]) == len(records.indices(_cfg(**cfg), 'test'))


def test_the_prepared_source_pickles_small_and_reads_the_same_records(prepared):
  src = records.source(_cfg(**prepared), 'train')
  data = pickle.dumps(src)
  assert len(data) < 4096  # the ArrayRecord reader, not TFDS's DatasetInfo
  copy = pickle.loads(data)
  # TFDS's own data source of the split hands out the same records
  builder = tfds.builder(_cfg().dataset, data_dir=prepared['data_dir'])
  tfds_source = common.data_source(
    builder, 'train', deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  assert len(copy) == len(src) == len(tfds_source) > 1
  for i in (0, len(src) - 1):
    parsed = records.EncodedExample(records.tf_example_pb2.Example.FromString(tfds_source[i]))
    assert list(copy[i]['foggy']) == list(src[i]['foggy']) == list(parsed['foggy'])
    assert copy[i]['label'] == src[i]['label'] == parsed['label']
  assert list(copy[0]['foggy']) != list(copy[1]['foggy'])


def test_an_in_memory_source_goes_to_the_workers():
  src = _examples(6)
  _assert_same(_batches({}, 'thread', source=src), _batches({}, 'process', source=src))


class _BadFrames:
  """Example 2's foggy frames are not images."""

  def __init__(self):
    self.items = _examples(4)
    self.items[2]['foggy'] = [b'not an image'] * 4

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def _first_error(kind):
  with pytest.raises(Exception) as info:
    list(
      ip.eval_iterator(
        _cfg(),
        **_workers(kind),
        batch_size=2,
        process_index=0,
        process_count=1,
        source=_BadFrames(),
      )
    )
  return info.value


def test_a_worker_exception_reaches_the_caller_as_with_threads():
  in_thread, in_process = _first_error('thread'), _first_error('process')
  assert type(in_process) is type(in_thread) is ValueError
  # the message names the example; PIL's names an in-memory file by its address
  address = re.compile(r'0x[0-9a-f]+')
  assert address.sub('', str(in_process)) == address.sub('', str(in_thread))
  assert str(in_thread).startswith('the given source: example 2: UnidentifiedImageError')


class _Dies:
  def __len__(self):
    return 4

  def __getitem__(self, i):
    os._exit(3)


def test_a_dead_worker_is_reported_with_what_to_do():
  it = ip.train_iterator(
    _cfg(),
    **_workers('process'),
    batch_size=2,
    seed=0,
    process_index=0,
    process_count=1,
    source=_Dies(),
  )
  with pytest.raises(
    RuntimeError, match=r"worker process died.*__main__.*config\.perf\.worker_type='thread'"
  ):
    next(it)


class _Probe:
  """Examples whose label says what jax set up in the process reading them: 1 when no
  backend is initialised and the platform is the CPU."""

  def __len__(self):
    return 4

  def __getitem__(self, i):
    ex = dict(_examples(1)[0])
    ex['label'] = int(
      not xla_bridge.backends_are_initialized() and jax.config.jax_platforms == 'cpu'
    )
    return ex


def test_workers_do_not_claim_the_accelerator(monkeypatch):
  # as on a GPU host: the worker inherits no platform choice (tests/conftest.py sets cpu)
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  it = ip.train_iterator(
    _cfg(),
    **_workers('process', num_workers=1),
    batch_size=2,
    seed=0,
    process_index=0,
    process_count=1,
    source=_Probe(),
  )
  try:
    np.testing.assert_array_equal(next(it)['label'], [1, 1])
  finally:
    it.close()


@pytest.mark.parametrize(
  'key, value, match',
  [
    ('worker_type', 'processes', r'config\.perf\.worker_type: must be one of'),
    ('num_workers', 0, r'config\.perf\.num_workers: must be an integer >= 1'),
    ('prefetch', -1, r'config\.perf\.prefetch: must be an integer >= 0'),
  ],
)
def test_the_worker_keys_are_validated_in_perf(key, value, match):
  config = config_testutil.recipe()
  config.perf[key] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate_perf(config.perf, dtype=config.model.dtype)


def test_worker_type_is_checked_by_the_iterators():
  with pytest.raises(ValueError, match=r'config\.perf\.worker_type'):
    next(
      ip.eval_iterator(
        _cfg(),
        worker_type='fork',
        batch_size=2,
        process_index=0,
        process_count=1,
        source=_examples(2),
      )
    )


@pytest.mark.parametrize('kind', ['thread', 'process'])
def test_the_iterator_state_resumes_at_the_next_batch(kind):
  """Grain's iterator state (what a checkpoint would keep) restores the very next batch."""
  src = _examples(6)
  cfg, workers = _cfg(), _workers(kind)
  it = ip.train_iterator(
    cfg, **workers, batch_size=2, seed=1, process_index=0, process_count=1, source=src
  )
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  it.close()
  again = ip.train_iterator(
    cfg, **workers, batch_size=2, seed=1, process_index=0, process_count=1, source=src
  )
  again.set_state(state)
  _assert_same(want, [next(again) for _ in range(2)])
  again.close()
  # the same batches as a fresh iterator started at step 1
  start = ip.train_iterator(
    _cfg(),
    **_workers('thread'),
    batch_size=2,
    seed=1,
    start_step=1,
    process_index=0,
    process_count=1,
    source=src,
  )
  _assert_same(want, [next(start) for _ in range(2)])
  start.close()
