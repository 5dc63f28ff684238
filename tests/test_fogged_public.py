"""Fogged UCF-101 / HMDB-51 / Kinetics-100 builders: DatasetBuilderTestCase on dummy_data,
build-time fog (deterministic, per-clip level), split-file parsing and its errors."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tfds_testutil

import tfds_fogact  # noqa: F401  (registers the builders)
from tfds_fogact import fog
from tfds_fogact import video_io
from tfds_fogact.fogact import annotations
from tfds_fogact.fogged_public import fogged_public
from tfds_fogact.fogged_public import splits

DUMMY = os.path.join(os.path.dirname(fogged_public.__file__), 'dummy_data')
TINY = fogged_public.FoggedConfig(name='tiny', short_side=16, fps=8)


class Ucf101FogTest(tfds_testutil.BuilderTestCase):
  DATASET_CLASS = fogged_public.Ucf101Fog
  EXAMPLE_DIR = os.path.join(DUMMY, 'ucf101_fog')
  BUILDER_CONFIG_NAMES_TO_TEST = ['small']
  SPLITS = {'train': 6, 'test': 3}
  SKIP_CHECKSUMS = True


class Hmdb51FogTest(tfds_testutil.BuilderTestCase):
  DATASET_CLASS = fogged_public.Hmdb51Fog
  EXAMPLE_DIR = os.path.join(DUMMY, 'hmdb51_fog')
  BUILDER_CONFIG_NAMES_TO_TEST = ['small']
  SPLITS = {'train': 4, 'test': 2}
  SKIP_CHECKSUMS = True


class Kinetics100FogTest(tfds_testutil.BuilderTestCase):
  DATASET_CLASS = fogged_public.Kinetics100Fog
  EXAMPLE_DIR = os.path.join(DUMMY, 'kinetics100_fog')
  BUILDER_CONFIG_NAMES_TO_TEST = ['small']
  SPLITS = {'train': 6, 'test': 2}
  SKIP_CHECKSUMS = True


def test_registered_names():
  names = set(tfds.list_builders(with_community_datasets=False))
  assert {'ucf101_fog', 'hmdb51_fog', 'kinetics100_fog', 'fogact'} <= names


def test_foggy_stream_is_asm_fog_of_clean_stream(tmp_path):
  builder = fogged_public.Ucf101Fog(data_dir=os.fspath(tmp_path), config=TINY)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(DUMMY, 'ucf101_fog'))
  )
  examples = list(tfds.as_numpy(builder.as_dataset(split='train')))
  levels = set()
  for ex in examples:
    clip_id = ex['clip_id'].decode()
    level, seed = fogged_public.clip_fog(clip_id, TINY)
    assert ex['fog'] == ('light', 'dense').index(level)
    levels.add(level)
    label, stem = clip_id.split('/')
    src = os.path.join(DUMMY, 'ucf101_fog', 'UCF-101', label, stem + '.avi')
    clean, _ = video_io.read_video(src, fps=8, size=(16, 21))
    assert np.abs(ex['clean'].astype(int) - clean).mean() < 6
    expected = fog.apply_fog(clean, intensity=level, seed=seed)
    assert np.abs(ex['foggy'].astype(int) - expected).mean() < 4, clip_id  # other seed: > 5
    # Really foggy: pulled toward the airlight, contrast reduced.
    assert ex['foggy'].std() < ex['clean'].std()
    assert ex['perspective'] == -1 and ex['num_people'] == -1
  assert levels == {'light', 'dense'}  # Both levels are drawn over the 6 clips.


def test_clip_fog_is_a_function_of_seed_and_clip_id():
  a = fogged_public.clip_fog('X/v_1', TINY)
  assert a == fogged_public.clip_fog('X/v_1', TINY)
  other_seed = fogged_public.FoggedConfig(name='s', fog_seed=5)
  draws = {fogged_public.clip_fog(f'X/v_{i}', TINY) for i in range(40)}
  assert len({seed for _, seed in draws}) == 40
  assert {lvl for lvl, _ in draws} == {'light', 'dense'}
  assert [fogged_public.clip_fog(f'X/v_{i}', other_seed) for i in range(10)] != [
    fogged_public.clip_fog(f'X/v_{i}', TINY) for i in range(10)
  ]
  only_dense = fogged_public.FoggedConfig(name='d', fog_levels=('dense',))
  assert {fogged_public.clip_fog(f'X/v_{i}', only_dense)[0] for i in range(10)} == {'dense'}
  with pytest.raises(ValueError, match='fog_levels'):
    fogged_public.FoggedConfig(name='bad', fog_levels=('foggy',))


def test_ucf_lists_case_insensitive_and_errors_listed(tmp_path):
  root = tmp_path / 'ucf'
  shutil.copytree(os.path.join(DUMMY, 'ucf101_fog'), root)
  classes, clips = splits.ucf101(root)
  assert classes == ['ApplyEyeMakeup', 'Basketball', 'HandstandPushups']
  hs = [c for c in clips if c.label == 'HandstandPushups' and c.split == 'test']
  assert len(hs) == 1 and os.path.isfile(hs[0].clean)  # Listed as HandStandPushups/.
  assert {c.scene for c in clips} == {'g01', 'g02', 'g03'}
  with open(root / 'ucfTrainTestlist' / 'trainlist01.txt', 'a') as f:
    f.write('Juggling/v_Juggling_g01_c01.avi 7\r\nBasketball/v_Basketball_g09_c01.avi 2\r\n')
  with pytest.raises(annotations.AnnotationError) as info:
    splits.ucf101(root)
  problems = info.value.problems
  assert len(problems) == 2
  assert (
    'trainlist01.txt line 7' in problems[0] and "'Juggling' is not in classInd" in (problems[0])
  )
  assert 'trainlist01.txt line 8' in problems[1] and 'not found' in problems[1]
  with pytest.raises(ValueError, match='split_number'):
    splits.ucf101(root, split_number=4)


def test_hmdb_split_parsing_and_errors(tmp_path):
  root = tmp_path / 'hmdb'
  shutil.copytree(os.path.join(DUMMY, 'hmdb51_fog'), root)
  classes, clips = splits.hmdb51(root)
  assert classes == ['brush_hair', 'cartwheel']
  assert sorted(c.split for c in clips) == ['test'] * 2 + ['train'] * 4
  assert not any('_d_' in c.clip_id for c in clips)  # '0' rows are unused.
  split_file = root / 'testTrainMulti_7030_splits' / 'cartwheel_test_split1.txt'
  with open(split_file, 'a') as f:
    f.write('nothere.avi 1\nbroken line 7\n')
  with pytest.raises(annotations.AnnotationError) as info:
    splits.hmdb51(root)
  problems = info.value.problems
  assert len(problems) == 2
  assert 'cartwheel_test_split1.txt line 5' in problems[0] and 'not found' in problems[0]
  assert 'line 6' in problems[1] and "expected '<file>.avi 0|1|2'" in problems[1]


def test_kinetics_list_split_and_errors(tmp_path):
  root = tmp_path / 'k100'
  shutil.copytree(os.path.join(DUMMY, 'kinetics100_fog'), root)
  classes, clips = splits.kinetics100(root)
  assert classes == ['abseiling', 'air_drumming']
  clips = annotations.assign_splits(clips, seed=0)
  drum = [c.split for c in clips if c.label == 'air_drumming']
  assert sorted(drum) == ['test'] + ['train'] * 4
  (root / 'classes.txt').write_text('abseiling\nair_drumming\n')
  with open(root / 'kinetics100.csv', 'a') as f:
    f.write('videos/zumba/x.mp4,zumba,train\nvideos/abseiling/aaa111.mp4,abseiling,dev\n')
  with pytest.raises(annotations.AnnotationError) as info:
    splits.kinetics100(root)
  problems = info.value.problems
  assert len(problems) == 2
  assert (
    problems[0].startswith('line 10 ')
    and "label 'zumba'" in problems[0]
    and ('not found' in problems[0])
  )
  assert (
    problems[1].startswith('line 11 ')
    and "split 'dev'" in problems[1]
    and ('already listed on line 2' in problems[1])
  )


def test_kinetics_list_without_a_required_column_names_it(tmp_path):
  (tmp_path / 'kinetics100.csv').write_text('file,label,split\nvideos/a.mp4,a,train\n')
  with pytest.raises(
    annotations.AnnotationError, match=r"(?s)kinetics100\.csv.*lacks column\(s\) \['filename'\]"
  ):
    splits.kinetics100(tmp_path)
