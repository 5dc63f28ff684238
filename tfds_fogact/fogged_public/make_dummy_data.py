"""Writes dummy_data/{ucf101_fog,hmdb51_fog,kinetics100_fog}/ (tiny generated videos).

  python -m tfds_fogact.fogged_public.make_dummy_data [--out DIR]

Expected examples: UCF-101 split 1: 6 train / 3 test (one list line spells the class
folder with another case, as the real lists do, and one video is in no list);
HMDB-51 split 1: 4 train / 2 test (one '0' row per class is left out);
Kinetics-100: 6 train / 2 test (3 rows with a split, 5 without: 1 of them drawn to test).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil

from tfds_fogact import video_io
from tfds_fogact.fogact.make_dummy_data import tiny_clip

HERE = os.path.dirname(os.path.abspath(__file__))
UCF_CLASSES = ['ApplyEyeMakeup', 'Basketball', 'HandstandPushups']
HMDB_CLASSES = ['brush_hair', 'cartwheel']
K100_ROWS = [  # label, youtube id, split
  ('abseiling', 'aaa111', 'train'),
  ('abseiling', 'aab112', 'train'),
  ('abseiling', 'aac113', 'test'),
  ('air_drumming', 'bba221', ''),
  ('air_drumming', 'bbb222', ''),
  ('air_drumming', 'bbc223', ''),
  ('air_drumming', 'bbd224', ''),
  ('air_drumming', 'bbe225', ''),
]


def _write(path: str, seed: int, codec: str = 'libx264') -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  video_io.write_video(path, tiny_clip(seed, num_frames=8), 25, codec=codec)


def ucf101(out: str) -> None:
  lists = os.path.join(out, 'ucfTrainTestlist')
  os.makedirs(lists)
  with open(os.path.join(lists, 'classInd.txt'), 'w') as f:
    f.writelines(f'{i + 1} {c}\n' for i, c in enumerate(UCF_CLASSES))
  train, test = [], []
  seed = 0
  for ci, c in enumerate(UCF_CLASSES):
    for g in (1, 2, 3, 4):
      name = f'v_{c}_g0{g}_c01.avi'
      _write(os.path.join(out, 'UCF-101', c, name), seed, codec='mpeg4')
      seed += 1
      listed = ('HandStandPushups' if c == 'HandstandPushups' and g == 1 else c) + '/' + name
      if g == 1:
        test.append(listed)
      elif g in (2, 3):
        train.append(f'{listed} {ci + 1}')
      # g == 4: on disk but in no list.
  with open(os.path.join(lists, 'trainlist01.txt'), 'w') as f:
    f.write('\r\n'.join(train) + '\r\n')  # The official lists use CRLF.
  with open(os.path.join(lists, 'testlist01.txt'), 'w') as f:
    f.write('\r\n'.join(test) + '\r\n')


def hmdb51(out: str) -> None:
  split_dir = os.path.join(out, 'testTrainMulti_7030_splits')
  os.makedirs(split_dir)
  seed = 100
  for c in HMDB_CLASSES:
    rows = []
    for name, split_id in (('a', 1), ('b', 1), ('c', 2), ('d', 0)):
      fname = f'{c}_{name}_f_cm_np1_fr_med_0.avi'
      _write(os.path.join(out, 'hmdb51_org', c, fname), seed, codec='mpeg4')
      seed += 1
      rows.append(f'{fname} {split_id} ')
    with open(os.path.join(split_dir, f'{c}_test_split1.txt'), 'w') as f:
      f.write('\n'.join(rows) + '\n')


def kinetics100(out: str) -> None:
  os.makedirs(out)
  rows = []
  for i, (label, yid, split) in enumerate(K100_ROWS):
    rel = f'videos/{label}/{yid}.mp4'
    _write(os.path.join(out, rel), 200 + i)
    rows.append([rel, label, split])
  with open(os.path.join(out, 'kinetics100.csv'), 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(['filename', 'label', 'split'])
    w.writerows(rows)


def main(out: str) -> None:
  for name, fn in (
    ('ucf101_fog', ucf101),
    ('hmdb51_fog', hmdb51),
    ('kinetics100_fog', kinetics100),
  ):
    path = os.path.join(out, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    fn(path)
    print(f'wrote {path}')


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(HERE, 'dummy_data'))
  main(parser.parse_args().out)
