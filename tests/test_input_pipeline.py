"""Tests of the paired input pipeline (fognet_jax/records.py, augment.py, input_pipeline.py)."""

import io
import json

import config_testutil
import numpy as np
import pytest
from PIL import Image

from fognet_jax import augment
from fognet_jax import config_lib
from fognet_jax import input_pipeline as ip
from fognet_jax import pixels
from fognet_jax import records
from fognet_jax.models import clip

T_SRC, H, W = 12, 40, 56


def _png(frame):
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format='PNG')
  return buf.getvalue()


def _clean_clip(index):
  """Smooth but frame-specific content: every frame and position looks different."""
  rng = np.random.default_rng(index)
  yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
  frames = []
  for t in range(T_SRC):
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack(
      [127 + 120 * np.sin(xx / (3 + c) + yy / (5 + t) + phase[c]) for c in range(3)], -1
    )
    frames.append(np.clip(img, 0, 255).astype(np.uint8))
  return np.stack(frames)


def _foggy_of(clean):
  # a pixelwise affine map (ASM with constant t = 0.5, A = 200/255): foggy = clean / 2 + 100
  return (clean.astype(np.int32) // 2 + 100).astype(np.uint8)


class _Example(dict):
  """Example whose 'clean' access can be forbidden."""

  def __init__(self, *args, forbid_clean=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.forbid_clean = forbid_clean

  def __getitem__(self, key):
    if key == 'clean' and self.forbid_clean:
      raise AssertionError('the clean stream was read')
    return super().__getitem__(key)


class _Source:
  def __init__(self, n, identical=False, forbid_clean=False):
    self.items = []
    for i in range(n):
      clean = _clean_clip(i)
      foggy = clean if identical else _foggy_of(clean)
      self.items.append(
        _Example(
          clean=[_png(f) for f in clean],
          foggy=[_png(f) for f in foggy],
          label=i,
          forbid_clean=forbid_clean,
        )
      )
    self.reads = []

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    self.reads.append(int(i))
    return self.items[int(i)]


@pytest.fixture(scope='module')
def source():
  return _Source(12)


# The input workers at test size (the config's perf.worker_type / num_workers / prefetch).
WORKERS = dict(worker_type='thread', num_workers=2, prefetch=2)


def _train_iterator(data_cfg, **kw):
  return ip.train_iterator(data_cfg, **{**WORKERS, **kw})


def _eval_iterator(data_cfg, **kw):
  return ip.eval_iterator(data_cfg, **{**WORKERS, **kw})


def _cfg(**kw):
  """The recipe's data block at test size."""
  c = config_testutil.data_block()
  c.num_frames = 4
  c.image_size = 16
  for k, v in kw.items():
    if k.startswith('augment_'):
      c.augment[k[len('augment_') :]] = v
    else:
      c[k] = v
  return c


def _unnorm(x):
  return x * np.asarray(clip.IMAGE_STD, np.float32) + np.asarray(clip.IMAGE_MEAN, np.float32)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_paired_geometric_augmentation_keeps_streams_aligned(source):
  cfg = _cfg(augment_color_jitter_prob=0.0, augment_grayscale_prob=0.0)
  it = _train_iterator(cfg, batch_size=4, seed=3, source=source, process_index=0, process_count=1)
  for batch in _take(it, 3):
    clean, foggy = _unnorm(batch['clean']), _unnorm(batch['foggy'])
    assert clean.shape == foggy.shape == (4, 4, 16, 16, 3)
    # the same frames, crop and flip on both sides: the pixelwise relation survives
    err = np.abs(foggy - (clean / 2 + 100 / 255))
    assert err.max() < 2.5 / 255
    # a mismatch would be visible: frames / flips of the clean stream do not fit
    assert np.abs(foggy - (clean[:, ::-1] / 2 + 100 / 255)).mean() > 10 / 255
    assert np.abs(foggy - (clean[..., ::-1, :] / 2 + 100 / 255)).mean() > 10 / 255


def test_all_augmentations_are_identical_on_both_streams():
  src = _Source(6, identical=True)
  cfg = _cfg(augment_color_jitter_prob=1.0, augment_grayscale_prob=0.5)
  batch = next(
    _train_iterator(cfg, batch_size=6, seed=0, source=src, process_index=0, process_count=1)
  )
  np.testing.assert_array_equal(batch['clean'], batch['foggy'])
  # and the augmentation does something: the 6 clips' colour statistics differ from no-augment ones
  plain = next(
    _train_iterator(
      _cfg(augment_enabled=False),
      batch_size=6,
      seed=0,
      source=src,
      process_index=0,
      process_count=1,
    )
  )
  assert (
    np.abs(batch['clean'].mean(axis=(1, 2, 3)) - plain['clean'].mean(axis=(1, 2, 3))).max() > 0.05
  )


def test_color_ops_are_pixelwise_and_bounded():
  x = np.random.default_rng(0).uniform(0, 1, (5, 7, 3)).astype(np.float32)
  cj = augment.ColorJitter(
    apply=True, brightness=1.3, contrast=0.7, saturation=1.2, hue=0.05, order=(3, 1, 0, 2)
  )
  y = augment.apply_color(x, cj)
  assert y.min() >= 0 and y.max() <= 1
  # per-pixel: applying to a single pixel gives the same value
  np.testing.assert_allclose(augment.apply_color(x[2:3, 4:5], cj), y[2:3, 4:5], atol=1e-6)
  g = augment.apply_color(x, augment.ColorJitter(grayscale=True))
  np.testing.assert_allclose(g[..., 0], x @ np.array([0.299, 0.587, 0.114]), atol=1e-5)
  np.testing.assert_array_equal(augment.apply_color(x, augment.ColorJitter()), x)


def test_deterministic_and_seed_dependent(source):
  cfg = _cfg()
  a = _take(
    _train_iterator(cfg, batch_size=3, seed=1, source=source, process_index=0, process_count=1), 2
  )
  b = _take(
    _train_iterator(cfg, batch_size=3, seed=1, source=source, process_index=0, process_count=1), 2
  )
  c = _take(
    _train_iterator(cfg, batch_size=3, seed=2, source=source, process_index=0, process_count=1), 2
  )
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(np.abs(x['clean'] - z['clean']).max() > 0 for x, z in zip(a, c))


def test_resume_at_start_step_equals_uninterrupted_run(source):
  cfg = _cfg()
  full = _take(
    _train_iterator(cfg, batch_size=5, seed=4, source=source, process_index=0, process_count=1), 5
  )
  src = _Source(12)
  resumed = _take(
    _train_iterator(
      cfg, batch_size=5, seed=4, start_step=3, source=src, process_index=0, process_count=1
    ),
    2,
  )
  for x, y in zip(full[3:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # without replaying: only the examples of batches >= 3 (plus prefetch) were read
  assert len(src.reads) <= 5 * (2 + WORKERS['prefetch'] + 1)


def test_process_split_is_disjoint_and_covers_every_epoch(source):
  cfg = _cfg(augment_enabled=False)
  n, b, p = 12, 3, 2
  steps = 4  # 4 steps x 6 global = 2 epochs
  labels = {
    pi: [
      next_batch['label']
      for next_batch in _take(
        _train_iterator(
          cfg, batch_size=b, seed=0, source=source, process_index=pi, process_count=p
        ),
        steps,
      )
    ]
    for pi in range(p)
  }
  for step in range(steps):
    assert not set(labels[0][step]) & set(labels[1][step])
  for epoch in range(2):
    seen = np.concatenate([labels[pi][s] for pi in range(p) for s in (2 * epoch, 2 * epoch + 1)])
    assert sorted(seen.tolist()) == list(range(n))
  # the pure index function agrees and differs between epochs
  _, pos0 = ip.train_sample_ids(n, batch_size=6, seed=0, step=0, process_index=0, process_count=1)
  _, pos2 = ip.train_sample_ids(n, batch_size=6, seed=0, step=2, process_index=0, process_count=1)
  assert not np.array_equal(pos0, pos2)


def test_eval_never_touches_clean_and_pads_last_batch():
  src = _Source(5, forbid_clean=True)
  cfg = _cfg(num_clips=2, num_crops=3)
  batches = list(
    _eval_iterator(cfg, split='test', batch_size=2, source=src, process_index=0, process_count=1)
  )
  assert len(batches) == 3
  assert batches[0]['frames'].shape == (2, 6, 4, 16, 16, 3)
  assert 'clean' not in batches[0]
  np.testing.assert_array_equal(batches[-1]['mask'], [True, False])
  np.testing.assert_array_equal(
    np.concatenate([x['label'][x['mask']] for x in batches]), np.arange(5)
  )
  # two processes: same number of batches, disjoint examples covering the split
  per = [
    list(_eval_iterator(cfg, batch_size=2, source=src, process_index=pi, process_count=2))
    for pi in range(2)
  ]
  assert len(per[0]) == len(per[1]) == 2
  got = [np.concatenate([x['label'][x['mask']] for x in batches]) for batches in per]
  assert sorted(np.concatenate(got).tolist()) == list(range(5)) and not set(got[0]) & set(got[1])


def test_eval_views_crops_and_clips():
  frame = np.broadcast_to(np.linspace(0, 255, W).astype(np.uint8)[None, :, None], (H, W, 3)).copy()
  frames = [np.clip(frame.astype(int) + t, 0, 255).astype(np.uint8) for t in range(T_SRC)]
  ex = {'foggy': [_png(f) for f in frames], 'label': 0}
  views = _unnorm(augment.make_eval_views(ex, _cfg(num_clips=2, num_crops=3)))  # (6, T, S, S, 3)
  means = views.reshape(2, 3, -1).mean(-1)  # (clips, crops)
  assert np.all(means[:, 0] < means[:, 1]) and np.all(
    means[:, 1] < means[:, 2]
  )  # left < centre < right
  assert np.all(means[1] > means[0])  # the later clip: later (brighter) frames
  boxes = augment.eval_crop_boxes(H, W, 3)
  assert boxes[0][0] == 0 and boxes[-1][2] == W and boxes[1][0] == pytest.approx((W - H) / 2)
  assert augment.eval_crop_boxes(W, H, 1) == [(0.0, (W - H) / 2, float(H), (W - H) / 2 + H)]


def test_decoded_crop_flips_left_right():
  frame = _clean_clip(3)[0]
  box = (5, 3, 45, 35)
  plain = augment._decode_crop(_png(frame), box, 16, False)
  flipped = augment._decode_crop(_png(frame), box, 16, True)
  assert plain.shape == flipped.shape == (16, 16, 3) and plain.dtype == np.uint8
  np.testing.assert_array_equal(flipped, plain[:, ::-1])
  want = np.asarray(Image.fromarray(frame).resize((16, 16), Image.BILINEAR, box=box))
  np.testing.assert_array_equal(plain, want)


def _jpeg(frame, **kw):
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format='JPEG', **kw)
  return buf.getvalue()


def _opened(data):
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


_JPEG_KINDS = [
  'rgb',
  'gray',
  'progressive',
  '4:4:4',
  'exif + icc + comment',
  'restart markers',
  'odd size',
]


def _jpeg_of_kind(kind):
  frame = _clean_clip(2)[0]
  if kind == 'gray':
    return _jpeg(frame[..., 0])
  if kind == 'odd size':
    return _jpeg(frame[:37, :51])
  extra = {
    'progressive': dict(progressive=True),
    '4:4:4': dict(subsampling=0),
    'exif + icc + comment': dict(
      exif=Image.Exif().tobytes() + b'\0' * 40, icc_profile=b'\1' * 3000, comment=b'fog' * 30
    ),
    'restart markers': dict(restart_marker_blocks=2),
  }.get(kind, {})
  return _jpeg(frame, **extra)


@pytest.mark.parametrize('kind', _JPEG_KINDS)
def test_jpeg_frames_skip_image_open(kind, monkeypatch):
  data = _jpeg_of_kind(kind)
  want = _opened(data)
  with Image.open(io.BytesIO(data)) as im:
    assert augment._jpeg_size(data) == augment._frame_size(data) == (im.height, im.width)
  # the size from the start-of-frame marker goes straight to the JPEG decoder
  monkeypatch.setattr(Image, 'open', lambda *a, **k: pytest.fail('Image.open was called'))
  np.testing.assert_array_equal(np.asarray(augment._decode(data)), want)
  box = (5, 3, 35, 33)
  np.testing.assert_array_equal(
    augment._decode_crop(data, box, 16, True),
    np.asarray(Image.fromarray(want).resize((16, 16), Image.BILINEAR, box=box))[:, ::-1],
  )


def test_other_frames_go_through_image_open():
  frame = _clean_clip(5)[0]
  # PNG
  np.testing.assert_array_equal(np.asarray(augment._decode(_png(frame))), frame)
  assert augment._jpeg_size(_png(frame)) is None and augment._frame_size(_png(frame)) == (H, W)
  # CMYK: PIL's JPEG decoder cannot give RGB from it; Image.open + convert does
  cmyk = io.BytesIO()
  Image.fromarray(frame).convert('CMYK').save(cmyk, format='JPEG')
  np.testing.assert_array_equal(
    np.asarray(augment._decode(cmyk.getvalue())), _opened(cmyk.getvalue())
  )
  # a truncated JPEG: the error is Image.open's
  with pytest.raises(OSError):
    augment._decode(_jpeg(frame)[:300])


def test_frame_sampling_indices():
  np.testing.assert_array_equal(augment.eval_frame_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
  np.testing.assert_array_equal(
    augment.eval_frame_indices(16, 8, clip=0, num_clips=2), [0, 2, 4, 6, 8, 10, 12, 14]
  )
  np.testing.assert_array_equal(augment.eval_frame_indices(3, 6), [0, 0, 1, 1, 2, 2])
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = augment.train_frame_indices(20, 8, rng)
    seg = np.floor(np.arange(8) * 20 / 8)
    assert np.all(idx >= seg) and np.all(idx < np.floor((np.arange(8) + 1) * 20 / 8) + 1)
    assert np.all(np.diff(idx) >= 0) and idx.max() < 20
  short = augment.train_frame_indices(3, 8, rng)
  assert short.min() >= 0 and short.max() <= 2


def test_multiscale_crop_box():
  rng = np.random.default_rng(0)
  sizes = set()
  for _ in range(50):
    l, t, r, b = augment.multiscale_crop_box(H, W, rng, (1.0, 0.875, 0.75, 0.66))
    assert 0 <= l < r <= W and 0 <= t < b <= H
    sizes.add((r - l, b - t))
  allowed = {int(H * s) for s in (1.0, 0.875, 0.75, 0.66)}
  assert all(w in allowed and h in allowed for w, h in sizes) and len(sizes) > 3


def test_normalisation_matches_clip_constants():
  mean, std = np.asarray(clip.IMAGE_MEAN), np.asarray(clip.IMAGE_STD)
  x = np.full((1, 2, 2, 3), 200, np.uint8)
  np.testing.assert_allclose(augment.normalize(x)[0, 0, 0], (200 / 255 - mean) / std, rtol=1e-5)
  np.testing.assert_allclose(
    augment.normalize(x / 255, already_unit=True)[0, 0, 0], (200 / 255 - mean) / std, rtol=1e-5
  )


@pytest.mark.parametrize(
  'key, value, match',
  [
    ('fog', 'foggy', 'config.data.fog'),
    ('perspective', 'front,top', 'config.data.perspective'),
    ('num_frames', 0, 'config.data.num_frames'),
    ('augment_scales', (1.0, 1.5), 'config.data.augment.scales'),
    ('augment_flip_swap', 'a-b', 'config.data.augment.flip_swap'),
  ],
)
def test_validation_names_the_key(key, value, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate_data(_cfg(**{key: value}))


def test_prepared_generated_dataset_with_filters(tmp_path):
  """End to end on a miniature synthetic_fog_act: build, filter, train and eval batches.

  The paper's protocols (Tables 5c / 5f): `fog` / `perspective` filter the training split
  only, the test split keeps every fog level and perspective; `replicate_to_full` repeats
  the filtered training set up to the full set's size.
  """
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'generation.json').write_text(
    json.dumps({'train_per_group': 1, 'test_per_group': 1, 'num_frames': 3})
  )
  cfg = _cfg(
    data_dir=str(tmp_path / 'data'),
    manual_dir=str(tmp_path / 'manual'),
    fog='dense',
    perspective='front,left',
  )
  info = records.prepare(cfg)
  n_classes = len(info.class_names)
  full = n_classes * 4  # one clip per (class, perspective) group
  assert info.num_examples['train'] == n_classes  # 2 of 4 perspectives, half of them dense
  train_src = records.source(cfg, 'train')
  kept = records.indices(cfg, 'train')
  assert all(train_src[i]['fog'] == 1 and train_src[i]['perspective'] in (0, 2) for i in kept)
  batch = next(_train_iterator(cfg, batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch['clean'].shape == (4, 4, 16, 16, 3) and batch['label'].dtype == np.int32
  # the test split is not filtered by the training subset: all fog levels and perspectives
  src = records.source(cfg, 'test')
  keep = records.indices(cfg, 'test')
  assert info.num_examples['test'] == len(keep) == full
  assert {src[i]['fog'] for i in keep} == {0, 1}
  assert {src[i]['perspective'] for i in keep} == {0, 1, 2, 3}
  ev = list(_eval_iterator(cfg, split='test', batch_size=8, process_index=0, process_count=1))
  assert sum(int(b['mask'].sum()) for b in ev) == full
  # explicit test filters still work
  dense_test = _cfg(data_dir=cfg.data_dir, eval_fog='dense')
  assert all(src[i]['fog'] == 1 for i in records.indices(dense_test, 'test'))
  assert len(records.indices(dense_test, 'test')) == full // 2
  # volume control: the replicated training set has the full set's size, each kept clip
  # the same number of times (Table 5c: one perspective x 4; Table 5f: one level x 2)
  for kw, factor in (
    (dict(perspective='back'), 4),
    (dict(fog='light'), 2),
    (dict(fog='dense', perspective='front,left'), 4),
  ):
    rep = _cfg(data_dir=cfg.data_dir, replicate_to_full=True, **kw)
    plain = records.indices(_cfg(data_dir=cfg.data_dir, **kw), 'train')
    idx = records.indices(rep, 'train')
    assert len(idx) == full == records.prepare(rep).num_examples['train']
    np.testing.assert_array_equal(np.unique(idx), plain)
    assert set(np.bincount(idx)[plain].tolist()) == {factor}
    assert len(records.indices(rep, 'test')) == full
  unfiltered = _cfg(data_dir=cfg.data_dir, replicate_to_full=True)
  np.testing.assert_array_equal(records.indices(unfiltered, 'train'), np.arange(full))
  with pytest.raises(ValueError, match='config.data.dataset'):
    records.prepare(_cfg(dataset='no_such_dataset', data_dir=str(tmp_path / 'data')))


def test_clean_stream_evaluation_reads_the_clean_frames():
  foggy_only = list(
    _eval_iterator(
      _cfg(),
      split='test',
      batch_size=3,
      source=_Source(3, forbid_clean=True),
      process_index=0,
      process_count=1,
    )
  )
  clean = list(
    _eval_iterator(
      _cfg(),
      split='test',
      batch_size=3,
      source=_Source(3),
      process_index=0,
      process_count=1,
      stream='clean',
    )
  )
  c, f = _unnorm(clean[0]['frames']), _unnorm(foggy_only[0]['frames'])
  # the source's foggy frames are clean / 2 + 100: views of the clean stream invert that
  assert np.abs(f - (c / 2 + 100 / 255)).max() < 2.5 / 255
  assert np.abs(c - f).mean() > 20 / 255
  expected = augment.make_eval_views({'foggy': _Source(3).items[1]['clean']}, _cfg())
  np.testing.assert_allclose(clean[0]['frames'][1], expected, atol=1e-6)
  with pytest.raises(ValueError, match='stream'):
    next(
      _eval_iterator(
        _cfg(), batch_size=2, source=_Source(2), process_index=0, process_count=1, stream='both'
      )
    )


def test_simulated_fog_replaces_the_foggy_stream():
  """train_sim_fog: the foggy stream is homogeneous ASM fog of the clean one, per sample."""
  src = _Source(4, identical=True)
  for i, item in enumerate(src.items):
    item['fog'] = i % 2
    item['foggy'] = [_png(np.zeros((H, W, 3), np.uint8))] * T_SRC  # must never be used
  kw = dict(batch_size=4, seed=0, source=src, process_index=0, process_count=1)
  cfg = _cfg(train_sim_fog='homogeneous', augment_color_jitter_prob=0.0, augment_grayscale_prob=0.0)
  a, b = _take(_train_iterator(cfg, **kw), 1)[0], _take(_train_iterator(cfg, **kw), 1)[0]
  np.testing.assert_array_equal(a['foggy'], b['foggy'])  # deterministic per sample
  clean, foggy = _unnorm(a['clean']), _unnorm(a['foggy'])
  assert foggy.min() > 0.05  # not the black stored frames
  # fog lifts dark pixels and contrast drops; dense fog (odd labels) more than light fog
  contrast = foggy.std(axis=(1, 2, 3, 4)) / clean.std(axis=(1, 2, 3, 4))
  assert np.all(contrast < 0.95)
  dense, light = contrast[a['label'] % 2 == 1], contrast[a['label'] % 2 == 0]
  assert dense.max() < light.min()


def test_flip_swaps_labels_of_mirror_classes():
  src = _Source(6)
  for item in src.items:  # labels 0, 1, 2, 0, 1, 2
    item['label'] %= 3
  kw = dict(batch_size=6, seed=0, source=src, process_index=0, process_count=1)
  plain = _take(_train_iterator(_cfg(augment_flip_swap=''), **kw), 4)
  swapped = _take(_train_iterator(_cfg(augment_flip_swap='0:1'), **kw), 4)
  changed = 0
  for a, b in zip(plain, swapped):
    np.testing.assert_array_equal(a['clean'], b['clean'])  # same draws, same pixels
    diff = a['label'] != b['label']
    changed += int(diff.sum())
    assert set(zip(a['label'][diff].tolist(), b['label'][diff].tolist())) <= {(0, 1), (1, 0)}
    assert np.all(a['label'][a['label'] == 2] == 2)
  assert changed > 0
  np.testing.assert_array_equal(
    augment.flip_table(_cfg(augment_flip_swap='a:c'), ['a', 'b', 'c']), [2, 1, 0]
  )
  np.testing.assert_array_equal(
    augment.flip_table(_cfg(), ['a', 'b'], default_pairs=[('a', 'b')]), [1, 0]
  )
  np.testing.assert_array_equal(
    augment.flip_table(_cfg(augment_flip_swap=''), ['a', 'b'], [('a', 'b')]), [0, 1]
  )
  with pytest.raises(ValueError, match='flip_swap'):
    augment.flip_table(_cfg(augment_flip_swap='a-b'), ['a', 'b'])
  with pytest.raises(ValueError, match='unknown class'):
    augment.flip_table(_cfg(augment_flip_swap='a:z'), ['a', 'b'])


# ------------------------------------------------------------------ pixels on the device


@pytest.mark.parametrize(
  'kw',
  [
    dict(augment_color_jitter_prob=1.0, augment_grayscale_prob=0.5),
    dict(
      augment_color_jitter_prob=0.8,
      augment_grayscale_prob=0.2,
      augment_hue=0.5,
      augment_saturation=0.9,
      augment_contrast=0.9,
      augment_brightness=0.9,
    ),
    dict(augment_enabled=False),
    dict(train_sim_fog='homogeneous'),
  ],
  ids=['jitter+gray', 'strong', 'no-augment', 'sim-fog'],
)
def test_device_pixels_equal_the_host_path(source, kw):
  """The same seed gives the same training pairs (frames, flips, labels) on both paths: the
  uint8 frames + colour chains, made model input in the step, equal the host's floats."""
  if kw.get('train_sim_fog'):
    source = _Source(6)
    for ex in source.items:
      ex['fog'] = 1  # dense
  host = _take(
    _train_iterator(
      _cfg(**kw), batch_size=6, seed=5, source=source, process_index=0, process_count=1
    ),
    2,
  )
  dev = _take(
    _train_iterator(
      _cfg(**kw),
      batch_size=6,
      seed=5,
      source=source,
      process_index=0,
      process_count=1,
      pixels_on_device=True,
    ),
    2,
  )
  for h, d in zip(host, dev):
    assert d['clean'].dtype == d['foggy'].dtype == np.uint8
    assert d['color'].shape == (6, pixels.COLOR_STEPS, 3, 4) and d['color'].dtype == np.float32
    np.testing.assert_array_equal(h['label'], d['label'])
    clean, foggy = pixels.train_inputs(d)
    np.testing.assert_allclose(np.asarray(clean), h['clean'], atol=2e-5)
    np.testing.assert_allclose(np.asarray(foggy), h['foggy'], atol=2e-5)


def test_device_eval_views_equal_the_host_path():
  src = _Source(3)
  cfg = dict(num_clips=2, num_crops=3)
  host = list(
    _eval_iterator(_cfg(**cfg), batch_size=2, source=src, process_index=0, process_count=1)
  )
  dev = list(
    _eval_iterator(
      _cfg(**cfg), batch_size=2, source=src, process_index=0, process_count=1, pixels_on_device=True
    )
  )
  assert len(host) == len(dev) == 2
  for h, d in zip(host, dev):
    assert d['frames'].dtype == np.uint8 and d['frames'].shape == h['frames'].shape
    np.testing.assert_array_equal(h['mask'], d['mask'])
    m = h['mask']
    np.testing.assert_allclose(
      np.asarray(pixels.model_input(d['frames']))[m], h['frames'][m], atol=2e-5
    )
