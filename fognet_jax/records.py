"""Dataset access: a prepared ``tfds_fogact`` dataset as random-access encoded examples.

A split is read through random access (the ``as_data_source`` of its ArrayRecord
copy, see ``tfds_fogact.common``) as raw records (``DeserializeMethod.RAW_BYTES``;
TFDS 4.9's ``SkipDecoding`` is not supported by the NumPy decoding path), parsed
here with the ``Example`` protobuf that TFDS ships (``tensorflow_datasets.proto``),
so reading needs no TensorFlow: an :class:`EncodedExample` hands out the encoded
JPEG frames, and the caller decodes only those a clip needs (see ``augment``).

Subsets (paper Tables 5c / 5f): ``fog`` ('light' / 'dense' / None = both, alias
'multi') and ``perspective`` (None = all, or a name / comma-separated names) filter
the TRAINING split only; ``eval_fog`` / ``eval_perspective`` (default None = all)
filter the evaluation split, so the rows of a table share one test set. With
``replicate_to_full`` a filtered training split is repeated (cyclically) up to the
size of the unfiltered split: the paper's volume control, same epochs, same steps.
The fog / perspective ids of every example are read once and cached next to the
data (``fognet_index-<split>.json``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import os
from typing import Any
from typing import Optional

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from tfds_fogact import common  # importing tfds_fogact registers its builders

ROLES = ('train', 'eval')


class DataError(ValueError):
  """The configured data cannot be used (not prepared, no manual_dir, a missing split, clips
  shorter than `data.num_frames`, ...); the message names the config key."""


def _key(name: str, role: str) -> str:
  if role not in ROLES:
    raise ValueError(f'role must be one of {ROLES}, got {role!r}')
  return name if role == 'train' else f'eval_{name}'


def role_of(data_cfg, split: str) -> str:
  """'train' for `data.train_split`, 'eval' for every other split."""
  return 'train' if split == data_cfg.train_split else 'eval'


def fog_filter(data_cfg, role: str = 'train') -> Optional[str]:
  """The fog level `config.data.fog` (role 'train') or `config.data.eval_fog` (role 'eval')
  keeps, None for all; raises ValueError if unknown."""
  key = _key('fog', role)
  fog = data_cfg.get(key)
  if fog in (None, '', 'multi', 'all'):
    return None
  if fog not in common.FOG_LEVELS:
    raise ValueError(
      f"config.data.{key} must be one of {common.FOG_LEVELS}, 'multi' or None, got {fog!r}"
    )
  return fog


def perspective_filter(data_cfg, role: str = 'train') -> Optional[tuple[str, ...]]:
  """The perspectives `config.data.perspective` (role 'train') or `config.data.eval_perspective`
  (role 'eval') keeps, None for all; raises ValueError if unknown."""
  key = _key('perspective', role)
  p = data_cfg.get(key)
  if p in (None, '', 'all'):
    return None
  names = tuple(x.strip() for x in p.split(',')) if isinstance(p, str) else tuple(p)
  bad = [x for x in names if x not in common.PERSPECTIVES]
  if bad or not names:
    raise ValueError(
      f'config.data.{key}: unknown perspective(s) {bad}; use a comma-separated '
      f'subset of {common.PERSPECTIVES} or None'
    )
  return names


@dataclasses.dataclass
class DataInfo:
  """What the trainer needs to know about the prepared data."""

  name: str
  class_names: list[str]
  num_examples: dict[str, int]  # after the filters (and replication) of each split's role
  builder: Any = None


def _builder(data_cfg):
  try:
    return tfds.builder(data_cfg.dataset, data_dir=data_cfg.get('data_dir'))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f'config.data.dataset: unknown dataset {data_cfg.dataset!r} ({e})') from e


@functools.lru_cache(maxsize=16)
def _builder_cached(dataset: str, data_dir: Optional[str]):
  cfg = ml_collections.ConfigDict({'dataset': dataset, 'data_dir': data_dir})
  return _builder(cfg)


def prepare(data_cfg) -> DataInfo:
  """Builds the dataset if needed and returns its :class:`DataInfo` (`data_cfg` validated).

  A generated dataset (``synthetic_fog_act``) is built when missing (and
  ``build_if_missing``); a manual-download dataset needs ``config.data.manual_dir``.
  Raises DataError naming the config key of what cannot work.
  """
  builder = _builder_cached(data_cfg.dataset, data_cfg.get('data_dir'))
  if not builder.is_prepared():
    generated = builder.name.startswith('synthetic')
    if not data_cfg.get('build_if_missing', True):
      raise DataError(
        f'config.data.dataset {data_cfg.dataset!r} is not prepared in {builder.data_dir} '
        'and config.data.build_if_missing is False'
      )
    manual_dir = data_cfg.get('manual_dir')
    if not generated and not manual_dir:
      raise DataError(
        f'config.data.manual_dir: dataset {data_cfg.dataset!r} is not prepared in '
        f'{builder.data_dir}; give the directory holding its videos '
        f'(see docs/data_real.md)'
      )
    if manual_dir and not os.path.isdir(os.path.expanduser(manual_dir)):
      raise DataError(f'config.data.manual_dir: {manual_dir!r} is not a directory')
    dl = (
      tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
      if manual_dir
      else None
    )
    common.prepare(builder, dl)
  elif not common.has_random_access(builder):
    common.add_array_record(builder)
  for split in (data_cfg.train_split, data_cfg.eval_split):
    if split not in builder.info.splits:
      raise DataError(
        f'config.data: split {split!r} not in {data_cfg.dataset!r} '
        f'(splits: {list(builder.info.splits)})'
      )
  num = {s: len(indices(data_cfg, s, role_of(data_cfg, s))) for s in builder.info.splits}
  for split in (data_cfg.train_split, data_cfg.eval_split):
    if num[split] == 0:
      role = role_of(data_cfg, split)
      raise DataError(
        f'config.data: no {split!r} examples left after the filters '
        f'{_key("fog", role)}={data_cfg.get(_key("fog", role))!r}, '
        f'{_key("perspective", role)}={data_cfg.get(_key("perspective", role))!r}'
      )
  return DataInfo(
    name=data_cfg.dataset,
    class_names=list(builder.info.features['label'].names),
    num_examples=num,
    builder=builder,
  )


def stored_frames(data_cfg, builder) -> tuple[Optional[int], bool]:
  """(frames per stored clip, whether every clip has that many) of a prepared dataset.

  A builder whose config fixes the clip length (a `num_frames` field: the generated datasets)
  stores clips of one length: the first training example's. Other builders store each video's
  frames up to the config's `max_frames` (None: no bound known).
  """
  if getattr(builder.builder_config, 'num_frames', None) is not None:
    return int(source(data_cfg, data_cfg.train_split)[0]['num_frames']), True
  return getattr(builder.builder_config, 'max_frames', None), False


def check_num_frames(data_cfg, builder) -> None:
  """Raises DataError when `data.num_frames` exceeds the frames the clips hold (sampling
  would repeat frames)."""
  stored, exact = stored_frames(data_cfg, builder)
  if stored is not None and data_cfg.num_frames > stored:
    raise DataError(
      f'config.data.num_frames: {data_cfg.num_frames} frames per clip, but '
      f'{data_cfg.dataset!r} in {builder.data_dir} stores '
      f'{"" if exact else "at most "}{stored} frames per clip; '
      f'set config.data.num_frames <= {stored}'
    )


class EncodedExample(collections.abc.Mapping):
  """Lazy view of one stored example: fields are read from the parsed record on access.

  'clean' / 'foggy' are the lists of encoded JPEG frames (nothing is decoded here);
  integer features come back as int, text as str.
  """

  def __init__(self, proto):
    self._feature = proto.features.feature

  def __getitem__(self, key):
    if key not in self._feature:
      raise KeyError(key)
    f = self._feature[key]
    kind = f.WhichOneof('kind')
    if key in ('clean', 'foggy'):
      return f.bytes_list.value
    if kind == 'int64_list':
      return int(f.int64_list.value[0])
    if kind == 'bytes_list':
      return f.bytes_list.value[0].decode('utf-8')
    return f.float_list.value[0]

  def __iter__(self):
    return iter(self._feature)

  def __len__(self):
    return len(self._feature)


class EncodedSource(collections.abc.Sequence):
  """Random access to a split's records as :class:`EncodedExample` (videos stay encoded).

  `data_source` returns each record's bytes; they are only parsed (protobuf); frames are
  decoded by the caller, and only those a clip needs. A foggy-only reader never decodes the
  clean frames. Picklable when `data_source` is (the ArrayRecord reader that ``source``
  uses is, in a few hundred bytes: the input pipeline's worker processes get it that way).
  """

  def __init__(self, data_source):
    self._src = data_source

  def __len__(self):
    return len(self._src)

  def __getitem__(self, index):
    return EncodedExample(tf_example_pb2.Example.FromString(self._src[int(index)]))


def source(data_cfg, split: str) -> EncodedSource:
  """Random-access source of `split` (ArrayRecord copy) with the videos left encoded."""
  builder = _builder_cached(data_cfg.dataset, data_cfg.get('data_dir'))
  src = common.data_source(
    builder, split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  # With RAW_BYTES, TFDS's wrapper hands out its ArrayRecord reader's records unchanged; the
  # reader alone is read without TensorFlow and pickles small (TFDS's wrapper carries the
  # DatasetInfo, whose unpickling imports TensorFlow: seconds and ~0.5 GB in each worker).
  return EncodedSource(getattr(src, 'data_source', src))


def _metadata(data_cfg, split: str) -> dict[str, np.ndarray]:
  """fog / perspective ids of every example of a split, cached next to the data."""
  builder = _builder_cached(data_cfg.dataset, data_cfg.get('data_dir'))
  path = os.path.join(os.fspath(builder.data_dir), f'fognet_index-{split}.json')
  if os.path.exists(path):
    with open(path) as f:
      meta = json.load(f)
  else:
    src = source(data_cfg, split)
    meta = {'fog': [], 'perspective': []}
    for i in range(len(src)):
      ex = src[i]
      meta['fog'].append(ex['fog'])
      meta['perspective'].append(ex['perspective'])
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(meta, f)
    os.replace(tmp, path)
  return {k: np.asarray(v, np.int64) for k, v in meta.items()}


def indices(data_cfg, split: str, role: Optional[str] = None) -> np.ndarray:
  """Example indices of `split` that pass the filters of `role` ('train' | 'eval'; default:
  `role_of(data_cfg, split)`).

  Role 'train' with `data.replicate_to_full`: the kept indices are repeated cyclically up to
  the size of the unfiltered split (an index list with repeats, in dataset order).
  """
  role = role or role_of(data_cfg, split)
  fog = fog_filter(data_cfg, role)
  persp = perspective_filter(data_cfg, role)
  builder = _builder_cached(data_cfg.dataset, data_cfg.get('data_dir'))
  n = builder.info.splits[split].num_examples
  keep = np.ones(n, bool)
  if fog is not None or persp is not None:
    meta = _metadata(data_cfg, split)
    fog_names = builder.info.features['fog'].names
    persp_names = builder.info.features['perspective'].names
    if fog is not None:
      keep &= meta['fog'] == fog_names.index(fog)
    if persp is not None:
      keep &= np.isin(meta['perspective'], [persp_names.index(p) for p in persp])
  kept = np.nonzero(keep)[0]
  if role == 'train' and data_cfg.get('replicate_to_full', False) and 0 < len(kept) < n:
    kept = np.resize(kept, n)
  return kept
