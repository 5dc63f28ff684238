"""Turning annotated clips into paired TFDS examples, shared by the real-video builders.

* `read_clip` / `read_clip_jpeg` decode one video under a `common.VideoBuilderConfig`
  (frame-rate subsampling and resizing happen while decoding, see `tfds_fogact.video_io`);
  recorded pairs are JPEG-encoded frame by frame as they are decoded, so a build holds one
  encoded example (and, for the fogged public datasets, one reduced decoded clip) whatever
  the source resolution.
* `generate_examples` yields (clip_id, example) for every clip. A clip whose clean or foggy
  video cannot be decoded stops the build with a `VideoError` naming the file and the
  reason, unless bad videos are skipped (builder kwarg ``skip_bad_videos=True`` or the
  environment variable ``FOGACT_SKIP_BAD=1``): then the pair is left out and recorded in a
  `BuildReport`, which the builders write to ``build_report.tsv`` in the dataset
  directory and to ``DatasetInfo.metadata``. Clean and foggy streams of different lengths
  are trimmed to the common length with a logged warning (also recorded in the report).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import logging
import os
from typing import Callable
from typing import Iterable
from typing import Iterator
from typing import Optional

import numpy as np

from tfds_fogact import common
from tfds_fogact import video_io
from tfds_fogact.fogact.annotations import Clip
from tfds_fogact.video_io import VideoError

SKIP_ENV = 'FOGACT_SKIP_BAD'
REPORT_FILE = 'build_report.tsv'

log = logging.getLogger(__name__)


def skip_bad_from_env() -> bool:
  """Whether ``FOGACT_SKIP_BAD`` asks to skip bad videos (1/true/yes/on)."""
  value = os.environ.get(SKIP_ENV, '').strip().lower()
  if value in ('', '0', 'false', 'no', 'off'):
    return False
  if value in ('1', 'true', 'yes', 'on'):
    return True
  raise ValueError(f'environment variable {SKIP_ENV}={value!r}: use 1 or 0')


@dataclasses.dataclass
class BuildReport:
  """What a build left out (`skipped`) or changed (`trimmed`), one dict per event."""

  skipped: list = dataclasses.field(default_factory=list)
  trimmed: list = dataclasses.field(default_factory=list)

  def to_metadata(self) -> dict:
    return {'skipped_videos': list(self.skipped), 'trimmed_pairs': list(self.trimmed)}

  def write(self, data_dir) -> str:
    """Writes ``build_report.tsv`` (event, clip_id, file, detail) into data_dir."""
    path = os.path.join(os.fspath(data_dir), REPORT_FILE)
    with open(path, 'w', encoding='utf-8', newline='') as f:
      w = csv.writer(f, delimiter='\t', lineterminator='\n')
      w.writerow(['event', 'clip_id', 'file', 'detail'])
      for s in self.skipped:
        w.writerow(['skipped', s['clip_id'], s['file'], s['reason']])
      for t in self.trimmed:
        w.writerow(
          [
            'trimmed',
            t['clip_id'],
            t['clean'],
            f'clean {t["clean_frames"]} frames, foggy {t["foggy_frames"]}, kept {t["kept_frames"]}',
          ]
        )
    return path


def _output_size(path, config: common.VideoBuilderConfig) -> tuple[int, int]:
  info = video_io.probe(path)
  if info.width <= 0 or info.height <= 0:
    raise VideoError(path, f'video stream has no frame size ({info.width}×{info.height})')
  return tuple(config.output_size(info.height, info.width))


def read_clip(
  path, config: common.VideoBuilderConfig, size: Optional[tuple[int, int]] = None
) -> np.ndarray:
  """Decodes `path` to (T, H, W, 3) uint8 frames at the config's rate and size.

  `size` forces (height, width) (used to give the foggy stream the clean stream's size);
  otherwise it is `config.output_size` of the source. Raises VideoError.
  """
  size = tuple(size) if size is not None else _output_size(path, config)
  frames, _ = video_io.read_video(path, fps=config.fps, size=size, max_frames=config.max_frames)
  return frames


def read_clip_jpeg(
  path, config: common.VideoBuilderConfig, size: Optional[tuple[int, int]] = None
) -> tuple[list[bytes], tuple]:
  """Like `read_clip`, but JPEG-encodes each frame as it is decoded.

  Returns (JPEG bytes per frame, (height, width)). Only the encoded clip is held, so the
  memory of a recorded pair is bounded by its serialised size (plus one decoded frame).
  """
  size = tuple(size) if size is not None else _output_size(path, config)
  jpegs = [
    common.encode_jpeg(f, config.jpeg_quality)
    for f in video_io.iter_frames(path, fps=config.fps, size=size, max_frames=config.max_frames)
  ]
  return jpegs, size


def read_pair(
  clip: Clip, config: common.VideoBuilderConfig, report: Optional[BuildReport] = None
) -> tuple[list[bytes], list[bytes]]:
  """JPEG frames of the clean and foggy videos of `clip`: same size, same length.

  The foggy video is resized to the clean video's output size; streams of different
  lengths are trimmed to the common length (logged, and recorded in `report`).
  """
  clean, size = read_clip_jpeg(clip.clean, config)
  foggy, _ = read_clip_jpeg(clip.foggy, config, size=size)
  n_clean, n_foggy = len(clean), len(foggy)
  clean, foggy, dropped = video_io.trim_pair(clean, foggy, name=f'clip {clip.clip_id!r}')
  if dropped and report is not None:
    report.trimmed.append(
      {
        'clip_id': clip.clip_id,
        'clean': clip.clean,
        'foggy': clip.foggy,
        'clean_frames': n_clean,
        'foggy_frames': n_foggy,
        'kept_frames': len(clean),
      }
    )
  return clean, foggy


def _label_or_unknown(value: str) -> object:
  return value if value else -1  # ClassLabel -1 = unknown.


# make_foggy(clip, clean_frames) -> (foggy_frames, fog_level)
FogMaker = Callable[[Clip, np.ndarray], tuple[np.ndarray, str]]


def generate_examples(
  clips: Iterable[Clip],
  config: common.VideoBuilderConfig,
  *,
  skip_bad: bool,
  report: BuildReport,
  make_foggy: Optional[FogMaker] = None,
  hint: str = '',
) -> Iterator[tuple[str, dict]]:
  """Yields (clip_id, example dict for `common.paired_features`).

  Args:
    clips: clips with a foggy video, or without one when `make_foggy` makes it.
    config: resolution / frame-rate config.
    skip_bad: leave out pairs with an unreadable video (recorded in `report`) instead of
      raising.
    report: collects skipped and trimmed pairs.
    make_foggy: (clip, clean frames) -> (foggy frames, fog level) for datasets fogged at
      build time.
    hint: appended to the error message when a bad video stops the build.
  """
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    for clip in clips:
      try:
        if make_foggy is None:  # Recorded pair: JPEG-encoded while decoding.
          clean, foggy = read_pair(clip, config, report)
          fog = clip.fog
        else:  # Fog made from the whole decoded clip (temporally coherent fog field).
          frames = read_clip(clip.clean, config)
          foggy_frames, fog = make_foggy(clip, frames)
          clean = common.encode_jpeg_frames(frames, config.jpeg_quality, pool)
          foggy = common.encode_jpeg_frames(foggy_frames, config.jpeg_quality, pool)
          del frames, foggy_frames
      except VideoError as e:
        if not skip_bad:
          raise VideoError(
            e.path, f'{e.reason} (clip {clip.clip_id!r}, {clip.source}). {hint}'.rstrip()
          ) from e
        log.warning('Skipping clip %r: %s: %s', clip.clip_id, e.path, e.reason)
        report.skipped.append(
          {
            'clip_id': clip.clip_id,
            'file': e.path,
            'reason': e.reason,
            'clean': clip.clean,
            'foggy': clip.foggy or '',
          }
        )
        continue
      example = {
        'clean': clean,
        'foggy': foggy,
        'label': clip.label,
        'clip_id': clip.clip_id,
        'scene': clip.scene,
        'perspective': _label_or_unknown(clip.perspective),
        'fog': _label_or_unknown(fog),
        'num_people': np.int32(clip.num_people),
        'num_frames': np.int32(len(clean)),
      }
      yield clip.clip_id, example


SKIP_HINT = (
  'To build without such pairs, pass skip_bad_videos=True (e.g. '
  'tfds.builder(name, skip_bad_videos=True)) or set FOGACT_SKIP_BAD=1; skipped '
  f'pairs are then listed in {REPORT_FILE} in the dataset directory.'
)


class ReportingBuilderMixin:
  """The bad-video option and the build report of the real-video TFDS builders.

  Put before ``tfds.core.GeneratorBasedBuilder`` in the bases. Adds the constructor
  keyword ``skip_bad_videos`` (default: the ``FOGACT_SKIP_BAD`` environment variable, else
  False); after a build, writes ``build_report.tsv`` into the dataset directory and the
  keys ``skipped_videos`` / ``trimmed_pairs`` into ``info.metadata`` (a MetadataDict).
  """

  def __init__(self, *, skip_bad_videos: Optional[bool] = None, **kwargs):
    self.skip_bad_videos = skip_bad_from_env() if skip_bad_videos is None else bool(skip_bad_videos)
    self.build_report = BuildReport()
    super().__init__(**kwargs)

  def _download_and_prepare(self, dl_manager, download_config=None):
    self.build_report = BuildReport()
    super()._download_and_prepare(dl_manager, download_config)
    self.info.metadata.update(self.build_report.to_metadata())
    self.build_report.write(self.data_dir)  # The temporary dir, renamed when done.
    if self.build_report.skipped:
      log.warning(
        '%s: skipped %d pair(s) with unreadable videos; they are listed in %s in '
        'the dataset directory.',
        self.name,
        len(self.build_report.skipped),
        REPORT_FILE,
      )
