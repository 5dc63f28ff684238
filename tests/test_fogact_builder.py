"""FogAct builder: DatasetBuilderTestCase on dummy_data, annotation errors, plain layout,
bad-video handling (error / skip + report), trimming, stratified split."""

import csv
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tfds_testutil

import tfds_fogact  # noqa: F401  (registers the builders)
from tfds_fogact import video_io
from tfds_fogact.fogact import annotations
from tfds_fogact.fogact import fogact_dataset_builder
from tfds_fogact.fogact import video_pairs
from tfds_fogact.fogact.make_dummy_data import haze
from tfds_fogact.fogact.make_dummy_data import tiny_clip

DUMMY = os.path.join(os.path.dirname(fogact_dataset_builder.__file__), 'dummy_data')
TINY = fogact_dataset_builder.FogActConfig(name='tiny', short_side=16, fps=8)


class FogActDummyDataTest(tfds_testutil.BuilderTestCase):
  """The standard TFDS checks on dummy_data (made by make_dummy_data.py)."""

  DATASET_CLASS = fogact_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['small']
  SPLITS = {'train': 5, 'test': 2}
  SKIP_CHECKSUMS = True


# ----------------------------------------------------------------------------- utilities


def _header():
  return ['clip_id', 'label', 'clean', 'foggy', 'scene', 'perspective', 'fog', 'split']


def _write_csv(root, rows, header=None):
  with open(os.path.join(root, 'annotations.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header or _header())
    w.writerows(rows)


def _video(path, seed=0, n=10, foggy=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frames = tiny_clip(seed, num_frames=n)
  video_io.write_video(path, haze(frames) if foggy else frames, 25)


def _annotated_dir(root, classes=('a', 'b')):
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('\n'.join(classes) + '\n')


def _build(manual_dir, data_dir, **kwargs):
  builder = fogact_dataset_builder.Builder(data_dir=os.fspath(data_dir), config=TINY, **kwargs)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  )
  return builder


@pytest.fixture
def no_decoding(monkeypatch):
  """Fails the test if any video is opened (errors must come before decoding)."""

  def boom(*a, **k):
    raise AssertionError('a video was decoded before the annotation error')

  monkeypatch.setattr(video_io, '_open', boom)


# ----------------------------------------------------------------------------- annotations


def test_every_bad_row_is_listed_in_one_error(tmp_path, no_decoding):
  _annotated_dir(tmp_path)
  for name in ('c1', 'c2', 'c3', 'c4'):
    _video(tmp_path / 'clean' / f'{name}.mp4')
  for name in ('c1', 'c2', 'c3', 'c5'):
    _video(tmp_path / 'foggy' / f'{name}.mp4')
  rows = [
    ['ok1', 'a', 'clean/c1.mp4', 'foggy/c1.mp4', 's', 'front', 'light', 'train'],  # line 2
    ['bad_label', 'zebra', 'clean/c2.mp4', 'foggy/c2.mp4', 's', 'front', 'light', ''],  # 3
    ['bad_persp', 'a', 'clean/c3.mp4', 'foggy/c3.mp4', 's', 'top', 'light', ''],  # 4
    ['no_foggy', 'b', 'clean/c4.mp4', 'foggy/c4.mp4', 's', 'back', 'dense', ''],  # 5
    ['no_clean', 'b', 'clean/c5.mp4', 'foggy/c5.mp4', 's', 'left', 'dense', ''],  # 6
    ['bad_fog', 'b', 'clean/c1.mp4', 'foggy/c1.mp4', 's', 'left', 'thick', ''],  # 7
    ['empty_foggy', 'b', 'clean/c2.mp4', '', 's', 'left', 'dense', ''],  # 8
    ['bad_split', 'a', 'clean/c3.mp4', 'foggy/c3.mp4', 's', '', '', 'val'],  # 9
    ['ok1', 'a', 'clean/c1.mp4', 'foggy/c1.mp4', 's', 'right', 'dense', ''],  # 10 dup id
  ]
  _write_csv(tmp_path, rows)
  with pytest.raises(annotations.AnnotationError) as info:
    _build(tmp_path, tmp_path / 'data')
  err = info.value
  assert len(err.problems) == 8
  msg = str(err)
  assert 'annotations.csv' in msg and '8 problem(s)' in msg
  for line, needle in [
    (3, "label 'zebra' is not in classes.txt"),
    (4, "perspective 'top'"),
    (
      5,
      "foggy video 'foggy/c4.mp4' not found (the clean video 'clean/c4.mp4' has no foggy partner)",
    ),
    (6, "clean video 'clean/c5.mp4' not found"),
    (7, "fog 'thick'"),
    (8, "no foggy video: the clean video 'clean/c2.mp4' has no foggy"),
    (9, "split 'val'"),
    (10, 'clip_id already used on line 2'),
  ]:
    assert any(p.startswith(f'line {line} ') and needle in p for p in err.problems), (
      line,
      needle,
      err.problems,
    )


def test_missing_column_and_classes_file(tmp_path):
  _annotated_dir(tmp_path)
  _write_csv(
    tmp_path,
    [['x', 'a', 'c.mp4', 'f.mp4', '', '', '']],
    header=['clip_id', 'label', 'clean', 'foggy', 'scene', 'perspective', 'fog'],
  )
  with pytest.raises(annotations.AnnotationError, match=r"lacks column\(s\) \['split'\]"):
    annotations.load_manual_dir(tmp_path)
  os.remove(tmp_path / 'classes.txt')
  with pytest.raises(FileNotFoundError, match='no classes.txt'):
    annotations.load_manual_dir(tmp_path)
  with pytest.raises(FileNotFoundError, match='neither'):
    annotations.load_manual_dir(tmp_path / '..')


def test_plain_layout_unpaired_files_listed(tmp_path, no_decoding):
  _video(tmp_path / 'clean' / 'run' / 'x.mp4')
  _video(tmp_path / 'clean' / 'run' / 'y.avi')
  _video(tmp_path / 'foggy' / 'run' / 'x.mkv')  # Pairs with clean x.mp4 (stem).
  _video(tmp_path / 'foggy' / 'sit' / 'z.mov')
  with pytest.raises(annotations.AnnotationError) as info:
    _build(tmp_path, tmp_path / 'data')
  problems = info.value.problems
  assert len(problems) == 2
  assert 'clean/run/y.avi has no foggy partner' in problems[0]
  assert 'foggy/sit/z.mov has no clean partner' in problems[1]


def test_plain_layout_with_classes_file(tmp_path, no_decoding):
  for cls in ('run', 'sit'):
    _video(tmp_path / 'clean' / cls / 'x.mp4')
    _video(tmp_path / 'foggy' / cls / 'x.mp4')
  (tmp_path / 'classes.txt').write_text('sit\nrun\n')
  classes, clips = annotations.load_manual_dir(tmp_path)
  assert classes == ['sit', 'run']  # classes.txt order, not sorted
  assert [c.clip_id for c in clips] == ['run/x', 'sit/x']
  assert all(c.split == '' and c.perspective == '' and c.num_people == -1 for c in clips)
  (tmp_path / 'classes.txt').write_text('sit\n')
  with pytest.raises(annotations.AnnotationError, match="class folder 'run' is not in"):
    annotations.load_manual_dir(tmp_path)


def _splits(clips):
  return {c.clip_id: c.split for c in clips}


def test_stratified_split_is_seeded_and_order_free():
  clips = [
    annotations.Clip(clip_id=f'{lab}{i}', label=lab, clean='', foggy='')
    for lab, n in (('a', 10), ('b', 5), ('c', 1))
    for i in range(n)
  ]
  clips.append(annotations.Clip(clip_id='fixed', label='a', clean='', foggy='', split='test'))
  s0 = _splits(annotations.assign_splits(clips, seed=0))
  s0_rev = _splits(annotations.assign_splits(clips[::-1], seed=0))
  s1 = _splits(annotations.assign_splits(clips, seed=1))
  assert s0 == s0_rev
  assert s0 != s1
  assert s0['fixed'] == 'test'
  for lab, n in (('a', 10), ('b', 5), ('c', 1)):
    n_test = sum(s0[f'{lab}{i}'] == 'test' for i in range(n))
    assert n_test == int(round(0.2 * n)), lab
  assert set(s0.values()) == {'train', 'test'}


# ----------------------------------------------------------------------------- builds


def _plain_dir(root):
  for cls, names in (('wave', ('p', 'q', 'r')), ('clap', ('s', 't'))):
    for i, name in enumerate(names):
      _video(root / 'clean' / cls / f'{name}.mp4', seed=i)
      _video(root / 'foggy' / cls / f'{name}.mp4', seed=i, foggy=True)


def test_plain_layout_with_bad_video_skipped_and_reported(tmp_path, monkeypatch):
  _plain_dir(tmp_path)
  (tmp_path / 'clean' / 'wave' / 'q.mp4').write_bytes(b'')  # empty
  data = (tmp_path / 'foggy' / 'clap' / 't.mp4').read_bytes()
  (tmp_path / 'foggy' / 'clap' / 't.mp4').write_bytes(data[: len(data) // 10])  # cut
  monkeypatch.setenv(video_pairs.SKIP_ENV, '1')
  builder = _build(tmp_path, tmp_path / 'data')
  assert builder.skip_bad_videos
  assert builder.info.features['label'].names == ['clap', 'wave']  # sorted folders
  total = sum(s.num_examples for s in builder.info.splits.values())
  assert total == 3
  skipped = builder.info.metadata['skipped_videos']
  assert {s['clip_id'] for s in skipped} == {'wave/q', 'clap/t'}
  report = tmp_path / 'data' / 'fogact' / 'tiny' / '1.0.0' / video_pairs.REPORT_FILE
  lines = report.read_text().splitlines()
  assert lines[0] == 'event\tclip_id\tfile\tdetail'
  assert any('wave/q' in l and 'q.mp4' in l and 'empty file' in l for l in lines)
  assert any('clap/t' in l and 't.mp4' in l and 'not a readable video' in l for l in lines)
  # Metadata unknown in the plain layout; reloading the prepared dataset restores it all.
  reloaded = fogact_dataset_builder.Builder(data_dir=os.fspath(tmp_path / 'data'), config=TINY)
  assert reloaded.info.metadata['skipped_videos'] == skipped
  ex = next(iter(tfds.as_numpy(reloaded.as_dataset(split='train').take(1))))
  assert ex['perspective'] == -1 and ex['fog'] == -1 and ex['num_people'] == -1
  assert ex['clean'].shape == ex['foggy'].shape and ex['clean'].shape[1] == 16


def test_bad_video_stops_build_naming_file(tmp_path, monkeypatch):
  monkeypatch.delenv(video_pairs.SKIP_ENV, raising=False)
  _plain_dir(tmp_path)
  bad = tmp_path / 'clean' / 'wave' / 'r.mp4'
  bad.write_bytes(bytes(range(256)) * 8)
  with pytest.raises(video_io.VideoError) as info:
    _build(tmp_path, tmp_path / 'data')
  assert info.value.path == os.fspath(bad)
  msg = str(info.value)
  assert 'not a readable video' in msg and 'wave/r' in msg and 'skip_bad_videos=True' in msg
  assert not (tmp_path / 'data' / 'fogact' / 'tiny' / '1.0.0').exists()
  # Explicit kwarg wins over the environment.
  monkeypatch.setenv(video_pairs.SKIP_ENV, '1')
  with pytest.raises(video_io.VideoError):
    _build(tmp_path, tmp_path / 'data2', skip_bad_videos=False)


def test_dummy_data_trims_with_warning(tmp_path, caplog):
  with caplog.at_level(logging.WARNING, logger='tfds_fogact.video_io'):
    builder = _build(DUMMY, tmp_path)
  assert "clip 'c3': clean has 4 frames, foggy has 3; trimmed both to 3" in caplog.text
  assert 'dropped the last 1 clean frame' in caplog.text
  trimmed = builder.info.metadata['trimmed_pairs']
  assert [t['clip_id'] for t in trimmed] == ['c3']
  examples = {
    ex['clip_id'].decode(): ex
    for split in ('train', 'test')
    for ex in tfds.as_numpy(builder.as_dataset(split=split))
  }
  assert examples['c3']['num_frames'] == 3 and len(examples['c3']['foggy']) == 3
  assert examples['c0']['num_frames'] == 4  # 10 frames at 25 fps -> 8 fps: 0, 3, 6, 9
  # Annotated metadata survives; the explicit splits are kept.
  assert examples['c1']['perspective'] == 1 and examples['c1']['fog'] == 1
  assert examples['c4']['perspective'] == -1
  assert examples['c2']['num_people'] == 2
  assert {ex['clip_id'].decode() for ex in tfds.as_numpy(builder.as_dataset(split='test'))} >= {
    'c1'
  }
  # Clean frames are the decoded source, resized: compare with an independent decode.
  ref, _ = video_io.read_video(
    os.path.join(DUMMY, 'videos', 'clean', 'c0.mp4'), fps=8, size=(16, 21)
  )
  assert np.abs(examples['c0']['clean'].astype(int) - ref).mean() < 6


def test_plain_download_and_prepare_serves_tfds_load_and_a_fresh_data_source(tmp_path):
  """`download_and_prepare` alone (what `tfds.load` runs) also writes the ArrayRecord copy,
  and a new builder in the same data dir finds it, so `tfds.data_source` works after
  `tfds.load` without any extra step and yields the same examples."""
  _build(DUMMY, tmp_path)
  fresh = lambda: fogact_dataset_builder.Builder(data_dir=os.fspath(tmp_path), config=TINY)
  ds = fresh().as_dataset(split='train')
  source = fresh().as_data_source(split='train')
  loaded = sorted(ex['clip_id'].numpy().decode() for ex in ds)
  random_access = sorted(
    source[i]['clip_id'].decode()
    if isinstance(source[i]['clip_id'], bytes)
    else str(source[i]['clip_id'])
    for i in range(len(source))
  )
  assert len(source) == 5
  assert random_access == loaded
