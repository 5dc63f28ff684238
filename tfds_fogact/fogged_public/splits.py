"""Official split files of UCF-101, HMDB-51 and the Kinetics-100 list, read into `Clip`s.

Accepted manual-directory layouts (see docs/data_real.md):

UCF-101::

    UCF-101/<Class>/v_<Class>_gXX_cYY.avi        (the videos; also UCF101/ or videos/)
    ucfTrainTestlist/classInd.txt               "1 ApplyEyeMakeup" (1-based index, name)
    ucfTrainTestlist/trainlist0N.txt            "<Class>/<file>.avi <index>"
    ucfTrainTestlist/testlist0N.txt             "<Class>/<file>.avi"

HMDB-51::

    hmdb51_org/<class>/<file>.avi               (also videos/, or the class folders directly)
    testTrainMulti_7030_splits/<class>_test_split<N>.txt   "<file>.avi 0|1|2"
                                                 (1 = train, 2 = test, 0 = unused)

Kinetics-100 (the 100-class subset of Kinetics-400 of the few-shot literature; there is no
single official archive, so a list is required)::

    kinetics100.csv      header "filename,label,split" (split may be empty or missing: a
                         seeded 80/20 split stratified by class is drawn); filename is
                         relative to the manual dir, e.g. videos/<label>/<youtube_id>.mp4
    classes.txt          optional: class order (label id); default = sorted labels

Every row problem (unknown class, missing video, malformed line, bad split value) is
collected over the whole list and raised as one `AnnotationError` before decoding starts.
"""

from __future__ import annotations

import os
import re
from typing import Optional
from typing import Sequence

from tfds_fogact import common
from tfds_fogact.fogact.annotations import AnnotationError
from tfds_fogact.fogact.annotations import Clip
from tfds_fogact.fogact.annotations import read_classes
from tfds_fogact.fogact.annotations import read_csv_rows
from tfds_fogact.video_io import VIDEO_EXTENSIONS

UCF_LIST_DIR = 'ucfTrainTestlist'
UCF_VIDEO_DIRS = ('UCF-101', 'UCF101', 'videos')
HMDB_SPLIT_DIRS = ('testTrainMulti_7030_splits', 'test_train_splits')
HMDB_VIDEO_DIRS = ('hmdb51_org', 'hmdb51', 'videos')
KINETICS_LIST = 'kinetics100.csv'
KINETICS_COLUMNS = ('filename', 'label')


def _video_root(manual_dir: str, candidates: Sequence[str]) -> str:
  for name in candidates:
    path = os.path.join(manual_dir, name)
    if os.path.isdir(path):
      return path
  return manual_dir


def _find(root: str, rel: str) -> Optional[str]:
  """root/rel, or the same path matched case-insensitively (the UCF lists spell some class
  names differently from the folders); None if absent."""
  path = os.path.join(root, rel)
  if os.path.isfile(path):
    return path
  cur = root
  for part in rel.split('/'):
    try:
      entries = {e.lower(): e for e in os.listdir(cur)}
    except OSError:
      return None
    if part.lower() not in entries:
      return None
    cur = os.path.join(cur, entries[part.lower()])
  return cur if os.path.isfile(cur) else None


def _require_split_number(split_number: int, allowed=(1, 2, 3)) -> None:
  if split_number not in allowed:
    raise ValueError(f'split_number must be one of {allowed}, got {split_number}')


def _read_lines(path: str) -> list[tuple[int, str]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: split file not found')
  with open(path, encoding='utf-8') as f:
    return [(i + 1, line.strip()) for i, line in enumerate(f) if line.strip()]


def ucf101(manual_dir, split_number: int = 1) -> tuple[list[str], list[Clip]]:
  """(classes in classInd order, clips) of UCF-101 split `split_number`."""
  _require_split_number(split_number)
  manual_dir = os.fspath(manual_dir)
  list_dir = os.path.join(manual_dir, UCF_LIST_DIR)
  class_ind = os.path.join(list_dir, 'classInd.txt')
  classes, problems = [], []
  for line_no, line in _read_lines(class_ind):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
      problems.append(
        f"line {line_no}: expected '<index> <ClassName>' with index "
        f'{len(classes) + 1}, got {line!r}'
      )
      continue
    classes.append(parts[1])
  if problems:
    raise AnnotationError(class_ind, problems)
  lower = {c.lower(): c for c in classes}
  root = _video_root(manual_dir, UCF_VIDEO_DIRS)
  clips, problems = [], []
  for split, name in (
    ('train', f'trainlist0{split_number}.txt'),
    ('test', f'testlist0{split_number}.txt'),
  ):
    path = os.path.join(list_dir, name)
    for line_no, line in _read_lines(path):
      rel = line.split()[0].replace('\\', '/')
      where = f'{name} line {line_no} ({rel})'
      folder = rel.split('/')[0] if '/' in rel else ''
      label = lower.get(folder.lower())
      errs = []
      if label is None:
        errs.append(f'class folder {folder!r} is not in classInd.txt')
      if not rel.lower().endswith(VIDEO_EXTENSIONS):
        errs.append('not a video file name')
      full = _find(root, rel)
      if full is None:
        errs.append(f'video not found under {root}')
      if errs:
        problems.append(f'{where}: ' + '; '.join(errs))
        continue
      stem = os.path.splitext(os.path.basename(rel))[0]
      group = re.search(r'_(g\d+)_', stem)
      clips.append(
        Clip(
          clip_id=f'{label}/{stem}',
          label=label,
          clean=full,
          foggy=None,
          scene=group.group(1) if group else '',
          split=split,
          source=f'{name} line {line_no}',
        )
      )
  if problems:
    raise AnnotationError(list_dir, problems)
  return classes, clips


def hmdb51(manual_dir, split_number: int = 1) -> tuple[list[str], list[Clip]]:
  """(sorted classes, clips) of HMDB-51 split `split_number` (unused '0' rows dropped)."""
  _require_split_number(split_number)
  manual_dir = os.fspath(manual_dir)
  split_dir = _video_root(manual_dir, HMDB_SPLIT_DIRS)
  if split_dir == manual_dir:
    raise FileNotFoundError(f'{manual_dir}: no split folder (one of {HMDB_SPLIT_DIRS})')
  suffix = f'_test_split{split_number}.txt'
  files = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix))
  if not files:
    raise FileNotFoundError(f"{split_dir}: no '<class>{suffix}' files")
  classes = [f[: -len(suffix)] for f in files]
  root = _video_root(manual_dir, HMDB_VIDEO_DIRS)
  clips, problems = [], []
  for label, fname in zip(classes, files):
    for line_no, line in _read_lines(os.path.join(split_dir, fname)):
      parts = line.split()
      where = f'{fname} line {line_no}'
      if len(parts) != 2 or parts[1] not in ('0', '1', '2'):
        problems.append(f"{where}: expected '<file>.avi 0|1|2', got {line!r}")
        continue
      if parts[1] == '0':
        continue
      full = _find(root, f'{label}/{parts[0]}')
      if full is None:
        problems.append(f'{where}: video {label}/{parts[0]} not found under {root}')
        continue
      stem = os.path.splitext(parts[0])[0]
      clips.append(
        Clip(
          clip_id=f'{label}/{stem}',
          label=label,
          clean=full,
          foggy=None,
          split='train' if parts[1] == '1' else 'test',
          source=where,
        )
      )
  if problems:
    raise AnnotationError(split_dir, problems)
  return classes, clips


def kinetics100(manual_dir) -> tuple[list[str], list[Clip]]:
  """(classes, clips) from ``kinetics100.csv`` (+ optional ``classes.txt``)."""
  manual_dir = os.fspath(manual_dir)
  path = os.path.join(manual_dir, KINETICS_LIST)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'{path} not found: Kinetics-100 needs a list with header '
      "'filename,label,split' (see docs/data_real.md)"
    )
  rows = [
    {k: (v or '').strip() for k, v in r.items() if k is not None}
    for r in read_csv_rows(path, KINETICS_COLUMNS, 'filename,label[,split]')
  ]
  classes_path = os.path.join(manual_dir, 'classes.txt')
  classes = (
    read_classes(classes_path)
    if os.path.isfile(classes_path)
    else sorted({r['label'] for r in rows if r['label']})
  )
  class_set = set(classes)
  clips, problems, seen = [], [], {}
  for i, row in enumerate(rows):
    line = i + 2
    rel = row['filename']
    errs = []
    if row['label'] not in class_set:
      errs.append(f'label {row["label"]!r} is not in classes.txt')
    split = row.get('split', '').lower()
    if split and split not in common.SPLITS:
      errs.append(f'split {row.get("split")!r} is not one of {", ".join(common.SPLITS)} (or empty)')
    if not rel.lower().endswith(VIDEO_EXTENSIONS):
      errs.append(f'filename {rel!r}: extension not one of {", ".join(VIDEO_EXTENSIONS)}')
    full = os.path.normpath(os.path.join(manual_dir, rel))
    if not os.path.isfile(full):
      errs.append(f'video {rel!r} not found')
    clip_id = f'{row["label"]}/{os.path.splitext(os.path.basename(rel))[0]}'
    if clip_id in seen:
      errs.append(f'clip {clip_id!r} already listed on line {seen[clip_id]}')
    seen.setdefault(clip_id, line)
    if errs:
      problems.append(f'line {line} ({rel}): ' + '; '.join(errs))
      continue
    clips.append(
      Clip(
        clip_id=clip_id,
        label=row['label'],
        clean=full,
        foggy=None,
        split=split,
        source=f'{KINETICS_LIST} line {line}',
      )
    )
  if problems:
    raise AnnotationError(path, problems)
  if not clips:
    raise AnnotationError(path, ['no rows'])
  return classes, clips
