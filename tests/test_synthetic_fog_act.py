"""Tests of the generated paired benchmark `synthetic_fog_act` and tfds_fogact.common."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tfds_testutil

import tfds_fogact  # noqa: F401  (registers the builders)
from tfds_fogact import common
from tfds_fogact import fog
from tfds_fogact.synthetic_fog_act import renderer
from tfds_fogact.synthetic_fog_act import synthetic_fog_act_dataset_builder as sfa

_GROUPS = len(renderer.CLASS_NAMES) * len(common.PERSPECTIVES)


class SyntheticFogActTest(tfds_testutil.BuilderTestCase):
  """Builds the miniature version described by dummy_data/generation.json."""

  DATASET_CLASS = sfa.SyntheticFogAct
  BUILDER_CONFIG_NAMES_TO_TEST = ['default']
  SPLITS = {'train': _GROUPS, 'test': _GROUPS}
  SKIP_CHECKSUMS = True


def test_registered_names():
  assert 'synthetic_fog_act' in tfds.list_builders()
  assert len(renderer.CLASS_NAMES) >= 10


def _render(label, seed=5, perspective='front', frames=6):
  spec = renderer.ClipSpec(
    label=label,
    perspective=perspective,
    scene='meadow',
    num_frames=frames,
    height=48,
    width=48,
    seed=seed,
  )
  return renderer.render_clip(spec)


def test_render_is_deterministic_and_seed_dependent():
  a, da = _render(0)
  b, db = _render(0)
  c, _ = _render(0, seed=6)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(da, db)
  assert a.dtype == np.uint8 and a.shape == (6, 48, 48, 3)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def test_classes_differ_in_single_frames():
  """No two classes differ only in time order: the clips' frame sets (order ignored) differ.

  With the same seed (figure, scene, phase), the time-averaged frame of every class is far
  from that of every other class, so a model that averages over frames can separate them.
  """
  means = [
    _render(c, frames=8)[0].astype(np.float32).mean(0) for c in range(len(renderer.CLASS_NAMES))
  ]
  for i in range(len(means)):
    for j in range(i + 1, len(means)):
      d = np.abs(means[i] - means[j]).mean()
      assert d > 0.3, (renderer.CLASS_NAMES[i], renderer.CLASS_NAMES[j], d)


def test_mirror_pairs_move_opposite_sides_on_screen():
  def centroid_x(frames):
    bg, _ = renderer.background('meadow', 'front', 48, 48)
    diff = np.abs(frames.astype(np.float32) / 255 - bg).sum(-1) > 0.1
    return np.array([np.nonzero(d)[1].mean() for d in diff])

  for left_name, right_name in renderer.MIRROR_CLASS_PAIRS:
    left, _ = _render(renderer.CLASS_NAMES.index(left_name), frames=8)
    right, _ = _render(renderer.CLASS_NAMES.index(right_name), frames=8)
    # front view: the figure faces the camera, its own left is the screen's right
    assert centroid_x(left).mean() > centroid_x(right).mean() + 0.4, left_name


def test_depth_map_and_figure_depth():
  frames, depth = _render(0)
  assert depth.shape == frames.shape[:3]
  assert depth.min() >= 0 and depth.max() <= 1
  assert np.all(depth[:, 0] == 1.0)  # sky row is far
  assert depth[:, -1].mean() < 0.5  # bottom ground rows are near


def test_clip_plan_is_balanced_and_deterministic():
  plan = sfa.clip_plan('train', 2, seed=0)
  assert plan == sfa.clip_plan('train', 2, seed=0)
  assert len(plan) == 2 * _GROUPS
  for label in range(len(renderer.CLASS_NAMES)):
    items = [p for p in plan if p['label'] == label]
    assert {p['perspective'] for p in items} == set(common.PERSPECTIVES)
    assert sorted(p['fog'] for p in items).count('light') == len(items) // 2
  assert len({p['seed'] for p in plan}) == len(plan)
  test_seeds = {p['seed'] for p in sfa.clip_plan('test', 2, seed=0)}
  assert not test_seeds & {p['seed'] for p in plan}


def test_example_pairs_clean_and_foggy_frames_of_the_same_clip():
  cfg = sfa.SyntheticFogAct.BUILDER_CONFIGS[0]
  items = sfa.clip_plan('test', 1, seed=0)
  diffs = {}
  for item in items[:8]:
    _, ex = sfa.make_example(item, cfg, 4, 'test')
    clean = np.stack([common.decode_jpeg(b) for b in ex['clean']]).astype(np.float32)
    foggy = np.stack([common.decode_jpeg(b) for b in ex['foggy']]).astype(np.float32)
    assert clean.shape == foggy.shape == (4, 64, 64, 3)
    # same scene: foggy = clean * t + A (1 - t), t < 1 => contrast drops, pixels stay correlated
    assert foggy.std() < clean.std()
    assert np.corrcoef(clean.ravel(), foggy.ravel())[0, 1] > 0.5
    diffs.setdefault(item['fog'], []).append(np.abs(foggy - clean).mean())
    # regenerated fog from the clean frames and the renderer depth matches the stored foggy frames
    spec = renderer.ClipSpec(
      item['label'], item['perspective'], item['scene'], 4, 64, 64, item['seed']
    )
    c, d = renderer.render_clip(spec)
    again = fog.apply_fog(c, intensity=item['fog'], seed=item['seed'], depth=d).astype(np.float32)
    assert np.abs(again - foggy).mean() < 3.0  # JPEG error only
  assert np.mean(diffs['dense']) > np.mean(diffs['light'])


def test_generation_json_overrides_and_validation(tmp_path):
  (tmp_path / 'generation.json').write_text(
    '{"train_per_group": 1, "test_per_group": 1, "num_frames": 2}'
  )
  builder = tfds.builder('synthetic_fog_act', data_dir=str(tmp_path / 'data'))
  # a plain download_and_prepare (DualFormatMixin) writes both the TFRecord and ArrayRecord files
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path))
  )
  assert builder.info.splits['train'].num_examples == _GROUPS
  # the TFRecord (tfds.load) and ArrayRecord (data_source) copies hold the same examples in order
  ds = builder.as_dataset(
    split='test',
    decoders={'clean': tfds.decode.SkipDecoding(), 'foggy': tfds.decode.SkipDecoding()},
  )
  ids_tf = [ex['clip_id'].numpy().decode() for ex in ds]
  fresh = tfds.builder('synthetic_fog_act', data_dir=str(tmp_path / 'data'))
  assert common.has_random_access(fresh)
  src = tfds.data_source('synthetic_fog_act', split='test', data_dir=str(tmp_path / 'data'))
  ids_ar = [src[i]['clip_id'] for i in range(len(src))]
  ids_ar = [x.decode() if isinstance(x, bytes) else x for x in ids_ar]
  assert ids_tf == ids_ar and len(ids_ar) == _GROUPS
  assert np.asarray(src[0]['clean']).shape == (2, 64, 64, 3)

  (tmp_path / 'generation.json').write_text('{"train_per_group": 1, "frames": 2}')
  bad = tfds.builder('synthetic_fog_act', data_dir=str(tmp_path / 'data2'))
  with pytest.raises(ValueError, match='unknown keys'):
    bad.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


def test_common_features_and_config_helpers():
  with pytest.raises(ValueError, match='duplicate'):
    common.paired_features(['a', 'a'])
  f = common.paired_features(['a', 'b'], (8, 10))
  assert f['clean'].shape == (None, 8, 10, 3)
  assert f['perspective'].names == list(common.PERSPECTIVES)
  assert f['fog'].names == list(common.FOG_LEVELS)
  cfg = common.VideoBuilderConfig(name='x', short_side=256, fps=5, max_frames=4)
  assert cfg.output_size(1080, 1920) == (256, 455)
  np.testing.assert_array_equal(cfg.frame_indices(30, 25.0), [0, 5, 10, 15])
  np.testing.assert_array_equal(
    common.VideoBuilderConfig(name='y').frame_indices(3, 25.0), [0, 1, 2]
  )
  frames = np.random.default_rng(0).integers(0, 255, (2, 100, 50, 3), dtype=np.uint8)
  assert cfg.resize(frames).shape == (2, 512, 256, 3)
  with pytest.raises(ValueError, match='short_side'):
    common.VideoBuilderConfig(name='bad', short_side=0)
  with pytest.raises(ValueError, match='fps'):
    common.VideoBuilderConfig(name='bad', fps=-1)
  smooth = np.broadcast_to(
    np.linspace(0, 255, 50).astype(np.uint8)[None, None, :, None], (2, 100, 50, 3)
  )
  jpeg = common.encode_jpeg_frames(smooth, quality=95)
  back = np.stack([common.decode_jpeg(b) for b in jpeg])
  assert back.shape == smooth.shape and np.abs(back.astype(int) - smooth).mean() < 3
  assert os.path.basename(sfa.GENERATION_FILE) == 'generation.json'


def test_mirror_pairs_are_declared_for_the_flip_augmentation():
  import config_testutil  # pylint: disable=g-import-not-at-top

  from fognet_jax import augment  # pylint: disable=g-import-not-at-top

  table = augment.flip_table(
    config_testutil.data_block(), renderer.CLASS_NAMES, sfa.SyntheticFogAct.MIRROR_CLASS_PAIRS
  )
  expected = np.arange(len(renderer.CLASS_NAMES))
  expected[[4, 5, 6, 7]] = [5, 4, 7, 6]  # wave left/right, kick left/right
  np.testing.assert_array_equal(table, expected)
