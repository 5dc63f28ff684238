"""Shared pieces of the paired clean/foggy video builders.

* :func:`paired_features`: the feature spec every paired dataset uses.
* :class:`VideoBuilderConfig`: builder configs for resolution (short side or fixed
  size) and frame-rate subsampling, with helpers applying them to decoded frames.
* :func:`encode_jpeg_frames`: JPEG-encode frames (PIL, optional thread pool) into
  the list of bytes that ``tfds.features.Video`` stores as is.
* File formats: every builder is prepared as TFRecord (what ``tfds.load`` /
  ``as_dataset`` read) and the shards are then copied into ArrayRecord, registered
  as an alternative file format of the same dataset (what ``tfds.data_source``
  and the project's input pipeline read, for random access). :func:`prepare` does
  both; :func:`add_array_record` converts an already prepared dataset.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import importlib.util
import io
import os
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

#: The paper's arXiv listing (abstract, PDF and the authors' links): the builders' homepage.
HOMEPAGE = 'https://arxiv.org/abs/2605.20645'
#: BibTeX of the paper that introduces FogAct and FogNet; every builder's citation starts with it.
CITATION = """\
@misc{liu2026seeing,
  title         = {Seeing Through Fog: Towards Fog-Invariant Action Recognition},
  author        = {Liu, Enqi and Pan, Liyuan and Gao, Zhi and Li, Lingzhi and Li, Qing},
  year          = {2026},
  eprint        = {2605.20645},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2605.20645}
}"""

PERSPECTIVES: tuple[str, ...] = ('front', 'back', 'left', 'right')
FOG_LEVELS: tuple[str, ...] = ('light', 'dense')
SPLITS: tuple[str, ...] = ('train', 'test')

DEFAULT_FILE_FORMAT = 'tfrecord'
RANDOM_ACCESS_FILE_FORMAT = 'array_record'
ALTERNATIVE_FILE_FORMATS = (RANDOM_ACCESS_FILE_FORMAT,)


@functools.cache
def tensorflow_available() -> bool:
  """Whether TensorFlow can be imported (it is not needed to read a prepared dataset)."""
  return importlib.util.find_spec('tensorflow') is not None


def _video_feature(shape) -> tfds.features.FeatureConnector:
  """A JPEG ``tfds.features.Video``; without TensorFlow, whose constructor needs it, the
  ``Sequence`` of JPEG ``Image``s that a Video is: the same records, the same parsing
  (reading a prepared dataset works; building one needs TensorFlow anyway)."""
  if tensorflow_available():
    return tfds.features.Video(shape=shape, encoding_format='jpeg')
  return tfds.features.Sequence(
    tfds.features.Image(shape=shape[1:], encoding_format='jpeg'), length=shape[0]
  )


def paired_features(
  class_names: Sequence[str], frame_shape: tuple[Optional[int], Optional[int]] = (None, None)
) -> tfds.features.FeaturesDict:
  """Feature spec of a paired clean/foggy video dataset.

  Args:
    class_names: label names, index = label id.
    frame_shape: (height, width) of the stored frames; None for a size that varies
      per clip (e.g. short-side resizing of videos with different aspect ratios).

  Returns:
    FeaturesDict with ``clean`` / ``foggy`` (JPEG-encoded ``Video``, (T, H, W, 3)
    uint8), ``label``, ``clip_id``, ``scene``, ``perspective`` (front/back/left/
    right), ``fog`` (light/dense), ``num_people`` (int32, -1 unknown) and
    ``num_frames`` (int32, frames per stream).
  """
  names = list(class_names)
  if not names:
    raise ValueError('paired_features: class_names is empty')
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f'paired_features: duplicate class names {dup}')
  if len(frame_shape) != 2:
    raise ValueError(f'paired_features: frame_shape must be (height, width), got {frame_shape}')
  h, w = frame_shape
  video = functools.partial(_video_feature, (None, h, w, 3))
  return tfds.features.FeaturesDict(
    {
      'clean': video(),
      'foggy': video(),
      'label': tfds.features.ClassLabel(names=names),
      'clip_id': tfds.features.Text(),
      'scene': tfds.features.Text(),
      'perspective': tfds.features.ClassLabel(names=list(PERSPECTIVES)),
      'fog': tfds.features.ClassLabel(names=list(FOG_LEVELS)),
      'num_people': tfds.features.Scalar(dtype=np.int32),
      'num_frames': tfds.features.Scalar(dtype=np.int32),
    }
  )


@dataclasses.dataclass(eq=False)
class VideoBuilderConfig(tfds.core.BuilderConfig):
  """Builder config for stored resolution and frame rate.

  Attributes:
    short_side: resize so the shorter side has this many pixels (aspect kept);
      None keeps the source size. Ignored when `frame_size` is set.
    frame_size: fixed (height, width) of the stored frames (aspect not kept).
    fps: target frame rate; frames are subsampled (never duplicated) from the
      source rate. None keeps every frame.
    max_frames: keep at most this many frames (after subsampling); None = all.
    jpeg_quality: JPEG quality of the stored frames (1-100).
  """

  short_side: Optional[int] = None
  frame_size: Optional[tuple[int, int]] = None
  fps: Optional[float] = None
  max_frames: Optional[int] = None
  jpeg_quality: int = 90

  def __post_init__(self):
    where = f'builder config {self.name!r}'
    if self.short_side is not None and self.short_side < 1:
      raise ValueError(f'{where}: short_side must be >= 1, got {self.short_side}')
    if self.frame_size is not None and (len(self.frame_size) != 2 or min(self.frame_size) < 1):
      raise ValueError(f'{where}: frame_size must be (height, width) >= 1, got {self.frame_size}')
    if self.fps is not None and not self.fps > 0:
      raise ValueError(f'{where}: fps must be > 0, got {self.fps}')
    if self.max_frames is not None and self.max_frames < 1:
      raise ValueError(f'{where}: max_frames must be >= 1, got {self.max_frames}')
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f'{where}: jpeg_quality must be in [1, 100], got {self.jpeg_quality}')

  @property
  def frame_shape(self) -> tuple[Optional[int], Optional[int]]:
    """(height, width) for :func:`paired_features`; (None, None) when it varies."""
    if self.frame_size is not None:
      return tuple(self.frame_size)
    return (None, None)

  def output_size(self, height: int, width: int) -> tuple[int, int]:
    """Stored (height, width) of a source frame of the given size."""
    if self.frame_size is not None:
      return tuple(self.frame_size)
    if self.short_side is None:
      return height, width
    s = self.short_side / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))

  def frame_indices(self, num_frames: int, source_fps: Optional[float]) -> np.ndarray:
    """Indices of the source frames kept by `fps` subsampling and `max_frames`."""
    if num_frames < 0:
      raise ValueError(f'frame_indices: num_frames must be >= 0, got {num_frames}')
    if self.fps is None or source_fps is None or self.fps >= source_fps:
      idx = np.arange(num_frames)
    else:
      step = source_fps / self.fps
      idx = np.unique(np.floor(np.arange(0, num_frames, step) + 1e-6).astype(np.int64))
      idx = idx[idx < num_frames]
    if self.max_frames is not None:
      idx = idx[: self.max_frames]
    return idx

  def resize(self, frames: np.ndarray) -> np.ndarray:
    """Resizes (T, H, W, 3) uint8 frames to :meth:`output_size` (PIL, antialiased)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f'resize: frames must be (T, H, W, 3), got {frames.shape}')
    h, w = self.output_size(frames.shape[1], frames.shape[2])
    if (h, w) == frames.shape[1:3]:
      return frames
    return (
      np.stack([resize_frame(f, (h, w)) for f in frames])
      if len(frames)
      else (np.zeros((0, h, w, 3), np.uint8))
    )


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes one (H, W, 3) uint8 frame to size = (height, width), antialiased bilinear."""
  h, w = size
  return np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR, reducing_gap=2.0))


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of one (H, W, 3) uint8 frame."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(frame)).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def encode_jpeg_frames(
  frames, quality: int = 90, pool: Optional[concurrent.futures.Executor] = None
) -> list[bytes]:
  """JPEG-encodes a sequence of (H, W, 3) uint8 frames.

  The returned list of bytes can be given to ``tfds.features.Video`` directly
  (it stores already-encoded frames unchanged), which keeps TensorFlow out of the
  encoding path and lets a thread pool encode frames in parallel (PIL releases the
  GIL while encoding).
  """
  if pool is None:
    return [encode_jpeg(f, quality) for f in frames]
  return list(pool.map(lambda f: encode_jpeg(f, quality), frames))


def decode_jpeg(data: bytes) -> np.ndarray:
  """(H, W, 3) uint8 frame from JPEG (or PNG) bytes."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


# ----------------------------------------------------------------------------- file formats


def _split_shards(builder: tfds.core.DatasetBuilder, split: str, file_format: str) -> list[str]:
  split_info = builder.info.splits[split]
  template = split_info.filename_template.replace(filetype_suffix=file_format)
  return [os.fspath(p) for p in template.sharded_filepaths(num_shards=split_info.num_shards)]


def has_random_access(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether every ArrayRecord shard of the prepared dataset exists."""
  if not builder.info.splits:
    return False
  return all(
    os.path.exists(f)
    for split in builder.info.splits
    for f in _split_shards(builder, split, RANDOM_ACCESS_FILE_FORMAT)
  )


def _register_alternative(builder: tfds.core.DatasetBuilder) -> None:
  # TFDS 4.9 restores `alternative_file_formats` from dataset_info.json into the proto only,
  # not into the list `available_file_formats()` reads, so builders also declare it in code
  # (ALTERNATIVE_FILE_FORMATS); this covers builders that do not.
  if RANDOM_ACCESS_FILE_FORMAT not in {f.value for f in builder.info.alternative_file_formats}:
    builder.info.add_alternative_file_format(RANDOM_ACCESS_FILE_FORMAT)


def add_array_record(builder: tfds.core.DatasetBuilder) -> None:
  """Copies the TFRecord shards of a prepared dataset into ArrayRecord shards.

  Records are copied byte for byte in shard order, so the ArrayRecord copy holds
  the same examples in the same order; 'array_record' is then listed in the
  dataset's ``alternative_file_formats`` (``dataset_info.json`` and the in-memory
  info), which is what ``tfds.data_source`` looks for. Shards already converted
  are kept (idempotent; an interrupted conversion resumes).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  if builder.info.file_format is None or builder.info.file_format.value != DEFAULT_FILE_FORMAT:
    raise ValueError(
      f'add_array_record: {builder.data_dir} is stored as {builder.info.file_format}, expected'
      f' {DEFAULT_FILE_FORMAT}'
    )
  if not has_random_access(builder):
    for split in builder.info.splits:
      src = _split_shards(builder, split, DEFAULT_FILE_FORMAT)
      dst = _split_shards(builder, split, RANDOM_ACCESS_FILE_FORMAT)
      lengths = builder.info.splits[split].shard_lengths
      for s, d, n in zip(src, dst, lengths):
        if os.path.exists(d):
          continue
        tmp = d + '.incomplete'
        writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
        count = 0
        for record in tf.data.TFRecordDataset(s).as_numpy_iterator():
          writer.write(record)
          count += 1
        writer.close()
        if count != n:
          os.remove(tmp)
          raise IOError(f'add_array_record: {s} holds {count} records, dataset_info says {n}')
        os.replace(tmp, d)
  _register_alternative(builder)
  builder.info.write_to_directory(builder.data_dir)


def prepare(
  builder: tfds.core.DatasetBuilder, download_config: Optional[tfds.download.DownloadConfig] = None
) -> tfds.core.DatasetBuilder:
  """Prepares `builder` as TFRecord (for ``tfds.load``) plus an ArrayRecord copy.

  After this both ``builder.as_dataset(...)`` / ``tfds.load(...)`` and
  ``builder.as_data_source(...)`` / ``tfds.data_source(...)`` work on the same
  data directory. Builders should pass ``alternative_file_formats=
  ALTERNATIVE_FILE_FORMATS`` to their DatasetInfo so a fresh ``tfds.data_source``
  call finds the ArrayRecord copy.
  """
  builder.download_and_prepare(file_format=DEFAULT_FILE_FORMAT, download_config=download_config)
  add_array_record(builder)
  return builder


class DualFormatMixin:
  """Mixin for GeneratorBasedBuilders: every build also writes the ArrayRecord copy.

  ``download_and_prepare`` (and so ``tfds.load`` / ``tfds.data_source`` on a fresh data
  dir) builds TFRecord and then calls :func:`add_array_record`. Use with
  ``alternative_file_formats=list(ALTERNATIVE_FILE_FORMATS)`` in ``_info``:
  ``class MyBuilder(common.DualFormatMixin, tfds.core.GeneratorBasedBuilder)``.
  """

  def download_and_prepare(self, *args, **kwargs):
    super().download_and_prepare(*args, **kwargs)  # pytype: disable=attribute-error
    fmt = self.info.file_format
    if fmt is not None and fmt.value == DEFAULT_FILE_FORMAT and not has_random_access(self):
      add_array_record(self)


def data_source(
  builder: tfds.core.DatasetBuilder, split: str, *, decoders=None, deserialize_method=None
):
  """Random-access source (ArrayRecord) of a prepared split; converts first if needed.

  `deserialize_method` (a ``tfds.decode.DeserializeMethod``) defaults to
  DESERIALIZE_AND_DECODE; DESERIALIZE_NO_DECODE returns parsed ``tf.train.Example``s
  (needs TensorFlow); RAW_BYTES the serialized records.
  """
  if not has_random_access(builder):
    add_array_record(builder)
  _register_alternative(builder)
  kwargs = {} if deserialize_method is None else {'deserialize_method': deserialize_method}
  return builder.as_data_source(
    split=split, decoders=decoders, file_format=RANDOM_ACCESS_FILE_FORMAT, **kwargs
  )


def main(argv=None):
  """CLI: ``python -m tfds_fogact.common NAME[/CONFIG] [--data_dir D] [--manual_dir M]``."""
  # `python -m tfds_fogact.common` imports the package first, which registers the builders.
  parser = argparse.ArgumentParser(
    description='Prepare a tfds_fogact dataset (TFRecord + ArrayRecord).'
  )
  parser.add_argument(
    'name', help='dataset name, e.g. synthetic_fog_act or synthetic_fog_act/bench224'
  )
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--manual_dir', default=None)
  args = parser.parse_args(argv)
  builder = tfds.builder(args.name, data_dir=args.data_dir)
  cfg = tfds.download.DownloadConfig(manual_dir=args.manual_dir) if args.manual_dir else None
  prepare(builder, cfg)
  print(
    f'prepared {args.name} in {builder.data_dir}: '
    + ', '.join(f'{k}={v.num_examples}' for k, v in builder.info.splits.items())
  )


if __name__ == '__main__':
  main()
