"""Reading and validating the manual directory of a paired video dataset.

Two layouts are accepted (see `load_manual_dir`):

* annotated: ``classes.txt`` (one class name a line, line order = label id) and
  ``annotations.csv`` with the header ``clip_id,label,clean,foggy,scene,perspective,fog,split``
  (an optional ``num_people`` column may follow); paths are relative to the manual dir.
* plain: ``clean/<class>/<name>.<ext>`` and ``foggy/<class>/<name>.<ext>``, paired by the
  relative path without extension; classes are the sorted folder names (or ``classes.txt``
  when present); scene, perspective, fog and number of people are unknown.

Every problem a user can fix in the annotations (a clean video with no foggy partner or the
reverse, a missing file, a label not in ``classes.txt``, an unknown perspective / fog /
split value, a duplicate clip id) is collected over all rows and raised as ONE
`AnnotationError` listing every offending row, before any video is decoded.

Rows whose split is empty get a seeded 80/20 train/test split stratified by class
(`assign_splits`), independent of the row order.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import zlib
from typing import Iterable
from typing import Optional
from typing import Sequence

import numpy as np

from tfds_fogact import common
from tfds_fogact.video_io import VIDEO_EXTENSIONS

ANNOTATION_COLUMNS = ('clip_id', 'label', 'clean', 'foggy', 'scene', 'perspective', 'fog', 'split')
OPTIONAL_COLUMNS = ('num_people',)
CLASSES_FILE = 'classes.txt'
ANNOTATIONS_FILE = 'annotations.csv'
MAX_LISTED = 200  # Problems listed in one error message (the count is always given).

log = logging.getLogger(__name__)


class AnnotationError(ValueError):
  """Problems in a manual directory; `.problems` holds one line per offending row/file."""

  def __init__(self, source: str, problems: Sequence[str]):
    self.source = source
    self.problems = list(problems)
    listed = self.problems[:MAX_LISTED]
    more = len(self.problems) - len(listed)
    msg = (
      f'{source}: {len(self.problems)} problem(s), nothing was decoded:\n  '
      + '\n  '.join(listed)
      + (f'\n  ... and {more} more' if more else '')
    )
    super().__init__(msg)

  def __reduce__(self):
    return (type(self), (self.source, self.problems))


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip of a manual directory.

  Attributes:
    clip_id: unique id (the example key).
    label: class name.
    clean: absolute path of the clean video.
    foggy: absolute path of the foggy video, None when the fog is made at build time.
    scene: scene name, '' when unknown.
    perspective: one of `common.PERSPECTIVES`, '' when unknown.
    fog: one of `common.FOG_LEVELS`, '' when unknown (or chosen at build time).
    num_people: number of people, -1 when unknown.
    split: 'train', 'test' or '' (not assigned yet).
    source: where the clip was declared (e.g. 'annotations.csv line 7'), for messages.
  """

  clip_id: str
  label: str
  clean: str
  foggy: Optional[str]
  scene: str = ''
  perspective: str = ''
  fog: str = ''
  num_people: int = -1
  split: str = ''
  source: str = ''


def read_classes(path) -> list[str]:
  """Class names of a ``classes.txt`` (one a line, blank lines ignored), in order."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: class list not found')
  with open(path, encoding='utf-8') as f:
    names = [line.strip() for line in f]
  names = [n for n in names if n]
  if not names:
    raise AnnotationError(path, ['no class names (the file is empty)'])
  seen, problems = set(), []
  for name in names:
    if name in seen:
      problems.append(f'class {name!r} is listed twice')
    seen.add(name)
  if problems:
    raise AnnotationError(path, problems)
  return names


def _is_video(name: str) -> bool:
  return name.lower().endswith(VIDEO_EXTENSIONS)


def _resolve(manual_dir: str, rel: str) -> str:
  return os.path.normpath(os.path.join(manual_dir, os.path.expanduser(rel)))


def read_csv_rows(path: str, required: Sequence[str], expected: str) -> list[dict]:
  """Rows (dicts keyed by the stripped header) of a CSV file whose header must hold the
  `required` columns; otherwise one AnnotationError naming the file, the header found and
  `expected` (the header to write)."""
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
      raise AnnotationError(
        path, [f'header {header} lacks column(s) {missing}; expected {expected}']
      )
    reader.fieldnames = header
    return list(reader)


def read_annotations(manual_dir, classes: Sequence[str]) -> list[Clip]:
  """Parses and validates ``annotations.csv``; raises one AnnotationError for all rows."""
  manual_dir = os.fspath(manual_dir)
  path = os.path.join(manual_dir, ANNOTATIONS_FILE)
  class_set = set(classes)
  rows = read_csv_rows(path, ANNOTATION_COLUMNS, f'{",".join(ANNOTATION_COLUMNS)}[,num_people]')
  if not rows:
    raise AnnotationError(path, ['no rows'])

  clips, problems = [], []
  first_line = {}
  for i, row in enumerate(rows):
    line = i + 2  # 1-based, after the header.
    row = {k: (v or '').strip() for k, v in row.items() if k is not None}
    clip_id = row['clip_id']
    where = f'line {line} (clip_id {clip_id!r})'
    errs = []
    if not clip_id:
      errs.append('empty clip_id')
    elif clip_id in first_line:
      errs.append(f'clip_id already used on line {first_line[clip_id]}')
    else:
      first_line[clip_id] = line
    if row['label'] not in class_set:
      errs.append(f'label {row["label"]!r} is not in {CLASSES_FILE}')
    paths = {}
    for stream in ('clean', 'foggy'):
      other = 'foggy' if stream == 'clean' else 'clean'
      rel = row[stream]
      if not rel:
        errs.append(
          f'no {stream} video: the {other} video {row[other]!r} has no {stream} partner'
          if row[other]
          else f'no {stream} video'
        )
        continue
      full = _resolve(manual_dir, rel)
      paths[stream] = full
      if not _is_video(rel):
        errs.append(f'{stream} {rel!r}: extension not one of {", ".join(VIDEO_EXTENSIONS)}')
      elif not os.path.isfile(full):
        errs.append(
          f'{stream} video {rel!r} not found (the {other} video {row[other]!r} '
          f'has no {stream} partner)'
          if row[other]
          else f'{stream} video {rel!r} not found'
        )
    if paths.get('clean') and paths.get('clean') == paths.get('foggy'):
      errs.append('clean and foggy are the same file')
    perspective = row['perspective'].lower()
    if perspective and perspective not in common.PERSPECTIVES:
      errs.append(
        f'perspective {row["perspective"]!r} is not one of '
        f'{", ".join(common.PERSPECTIVES)} (or empty)'
      )
    fog = row['fog'].lower()
    if fog and fog not in common.FOG_LEVELS:
      errs.append(f'fog {row["fog"]!r} is not one of {", ".join(common.FOG_LEVELS)} (or empty)')
    split = row['split'].lower()
    if split and split not in common.SPLITS:
      errs.append(f'split {row["split"]!r} is not one of {", ".join(common.SPLITS)} (or empty)')
    num_people = -1
    if row.get('num_people'):
      try:
        num_people = int(row['num_people'])
        if num_people < 0:
          raise ValueError
      except ValueError:
        errs.append(f'num_people {row["num_people"]!r} is not a count >= 0')
    if errs:
      problems.append(f'{where}: ' + '; '.join(errs))
      continue
    clips.append(
      Clip(
        clip_id=clip_id,
        label=row['label'],
        clean=paths['clean'],
        foggy=paths['foggy'],
        scene=row['scene'],
        perspective=perspective,
        fog=fog,
        num_people=num_people,
        split=split,
        source=f'{ANNOTATIONS_FILE} line {line}',
      )
    )
  if problems:
    raise AnnotationError(path, problems)
  return clips


def _video_files(root: str) -> dict[str, str]:
  """{relative path without extension: relative path} of the videos under root."""
  files, dupes = {}, []
  ignored = 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      if name.startswith('.'):
        continue
      rel = os.path.relpath(os.path.join(dirpath, name), root)
      if not _is_video(name):
        ignored += 1
        continue
      stem = os.path.splitext(rel)[0]
      if stem in files:
        dupes.append(
          f'{os.path.basename(root)}/{files[stem]} and {os.path.basename(root)}/'
          f'{rel} have the same name: cannot tell which one to pair'
        )
      files[stem] = rel
  if ignored:
    log.warning(
      '%s: ignored %d file(s) that are not %s videos.', root, ignored, '/'.join(VIDEO_EXTENSIONS)
    )
  if dupes:
    raise AnnotationError(root, dupes)
  return files


def scan_plain_layout(manual_dir) -> tuple[list[str], list[Clip]]:
  """Pairs ``clean/<class>/<name>.<ext>`` with ``foggy/<class>/<name>.<ext>``.

  Returns (class names, clips). Classes come from ``classes.txt`` when present, else the
  sorted folder names. Raises one AnnotationError listing every unpaired video, every video
  outside a class folder and every folder not in ``classes.txt``.
  """
  manual_dir = os.fspath(manual_dir)
  clean_root = os.path.join(manual_dir, 'clean')
  foggy_root = os.path.join(manual_dir, 'foggy')
  clean = _video_files(clean_root)
  foggy = _video_files(foggy_root)
  problems = []
  for stem in sorted(set(clean) - set(foggy)):
    problems.append(f'clean/{clean[stem]} has no foggy partner (expected foggy/{stem}.<ext>)')
  for stem in sorted(set(foggy) - set(clean)):
    problems.append(f'foggy/{foggy[stem]} has no clean partner (expected clean/{stem}.<ext>)')
  paired = sorted(set(clean) & set(foggy))
  for stem in paired:
    if os.sep not in stem:
      problems.append(
        f'clean/{clean[stem]} is not inside a class folder (expected clean/<class>/<name>.<ext>)'
      )
  folder_classes = sorted({s.split(os.sep)[0] for s in [*clean, *foggy] if os.sep in s})
  classes_path = os.path.join(manual_dir, CLASSES_FILE)
  if os.path.isfile(classes_path):
    classes = read_classes(classes_path)
    problems += [
      f'class folder {name!r} is not in {CLASSES_FILE}'
      for name in folder_classes
      if name not in classes
    ]
  else:
    classes = folder_classes
  if not paired and not problems:
    problems.append('no paired videos found under clean/ and foggy/')
  if problems:
    raise AnnotationError(manual_dir, problems)
  clips = [
    Clip(
      clip_id=stem.replace(os.sep, '/'),
      label=stem.split(os.sep)[0],
      clean=os.path.join(clean_root, clean[stem]),
      foggy=os.path.join(foggy_root, foggy[stem]),
      source=f'clean/{clean[stem]}',
    )
    for stem in paired
  ]
  return classes, clips


def load_manual_dir(manual_dir) -> tuple[list[str], list[Clip]]:
  """(class names, clips) of a FogAct-style manual directory (either layout)."""
  manual_dir = os.fspath(manual_dir)
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'manual dir {manual_dir} does not exist')
  if os.path.isfile(os.path.join(manual_dir, ANNOTATIONS_FILE)):
    classes_path = os.path.join(manual_dir, CLASSES_FILE)
    if not os.path.isfile(classes_path):
      raise FileNotFoundError(
        f'{manual_dir} has {ANNOTATIONS_FILE} but no {CLASSES_FILE} '
        '(one class name a line, line order = label id)'
      )
    classes = read_classes(classes_path)
    return classes, read_annotations(manual_dir, classes)
  if os.path.isdir(os.path.join(manual_dir, 'clean')) or os.path.isdir(
    os.path.join(manual_dir, 'foggy')
  ):
    return scan_plain_layout(manual_dir)
  raise FileNotFoundError(
    f'{manual_dir} holds neither {CLASSES_FILE} + {ANNOTATIONS_FILE} nor clean/<class>/ + '
    'foggy/<class>/ video folders'
  )


def assign_splits(clips: Iterable[Clip], *, seed: int, test_fraction: float = 0.2) -> list[Clip]:
  """Gives clips with an empty split a seeded train/test split, stratified by class.

  Within each class the clips without a split are sorted by clip_id and shuffled by a
  generator seeded with (seed, crc32(class name)); the first round(test_fraction * n) go
  to 'test', the rest to 'train'. The result depends only on (seed, the set of clips),
  never on row order. Clips that already have a split keep it.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction}')
  clips = list(clips)
  by_class: dict[str, list[int]] = {}
  for i, clip in enumerate(clips):
    if not clip.split:
      by_class.setdefault(clip.label, []).append(i)
  out = list(clips)
  for label, idx in sorted(by_class.items()):
    idx = sorted(idx, key=lambda i: clips[i].clip_id)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(label.encode())])
    order = rng.permutation(len(idx))
    n_test = int(round(test_fraction * len(idx)))
    for rank, j in enumerate(order):
      split = 'test' if rank < n_test else 'train'
      out[idx[j]] = dataclasses.replace(clips[idx[j]], split=split)
  return out
