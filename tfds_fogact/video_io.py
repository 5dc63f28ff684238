"""Streaming video reading and writing with PyAV.

`read_video` decodes a file frame by frame and, while decoding, drops frames to reach a
target frame rate and resizes each kept frame right away (swscale, area interpolation), so
the full-resolution clip is never held in memory: peak memory is one full-resolution frame
plus the reduced clip. Every way a file can fail to give frames (missing, empty, not a
video, no video stream, corrupt or truncated data, zero decodable frames) raises
`VideoError(path, reason)`.

`write_video` writes (T, H, W, 3) uint8 frames (an array or any iterable of frames, so long
clips can be written without holding them) with libx264 or mpeg4; the tests, the dummy-data
scripts and the memory benchmark use it.
"""

from __future__ import annotations

import dataclasses
import fractions
import logging
import math
import os
from typing import Iterable
from typing import Iterator
from typing import Sequence

import av
import numpy as np

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv')

# A file that decodes to fewer frames than its container declares, by more than this
# fraction (and more than 2 frames), is reported as truncated: durations derived from
# timestamps are rounded, a cut file loses the whole tail.
_TRUNCATION_SLACK = 0.02

_MAX_PREALLOCATED_FRAMES = 1 << 14

log = logging.getLogger(__name__)


class VideoError(Exception):
  """A video file could not be read; `.path` names the file, `.reason` says why."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'{self.path}: {reason}')

  def __reduce__(self):  # Picklable across processes.
    return (type(self), (self.path, self.reason))


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What the container says about the first video stream (no decoding)."""

  width: int
  height: int
  fps: float
  num_frames: int  # Declared frame count; 0 when the container does not store one.
  duration_s: float  # 0.0 when unknown.


def output_size(
  height: int, width: int, *, short_side: int | None = None, size: tuple[int, int] | None = None
) -> tuple[int, int]:
  """(out_height, out_width) for a `height`×`width` source.

  `size=(h, w)` gives a fixed size; `short_side=s` scales so the shorter side is `s`,
  keeping the aspect ratio (the longer side is rounded to the nearest integer); neither
  keeps the source size. Sources smaller than the target are scaled up, so every clip of a
  dataset built with one setting has the same short side.
  """
  if size is not None and short_side is not None:
    raise ValueError('Give at most one of short_side and size.')
  if size is not None:
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
      raise ValueError(f'size must be positive, got {size}.')
    return h, w
  if short_side is None:
    return height, width
  if short_side <= 0:
    raise ValueError(f'short_side must be positive, got {short_side}.')
  if height <= width:
    return short_side, max(1, int(round(width * short_side / height)))
  return max(1, int(round(height * short_side / width))), short_side


def _open(path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
  """Opens `path` and returns (container, first video stream), or raises VideoError."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise VideoError(path, 'file not found')
  if os.path.isdir(path):
    raise VideoError(path, 'is a directory, not a video file')
  if not os.access(path, os.R_OK):
    raise VideoError(path, 'file is not readable (permission denied)')
  if os.path.getsize(path) == 0:
    raise VideoError(path, 'empty file (0 bytes)')
  try:
    container = av.open(path, mode='r')
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise VideoError(path, f'not a readable video container ({e})') from e
  if not container.streams.video:
    container.close()
    raise VideoError(path, 'no video stream in the file')
  return container, container.streams.video[0]


def _stream_fps(stream) -> float:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  return float(rate) if rate else 0.0


def _duration_s(container, stream) -> float:
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if container.duration:  # In AV_TIME_BASE units (microseconds); e.g. Matroska.
    return container.duration / av.time_base
  return 0.0


def _declared_frames(container, stream, fps: float) -> int:
  if stream.frames:
    return int(stream.frames)
  return int(round(_duration_s(container, stream) * fps))


def _is_truncated(n_decoded: int, declared: int) -> bool:
  """Fewer frames than declared, beyond rounding of durations (2 frames or 2 %)."""
  return bool(declared) and n_decoded < declared - max(2, _TRUNCATION_SLACK * declared)


def probe(path) -> VideoInfo:
  """Reads the container header of `path` (no decoding); raises VideoError."""
  container, stream = _open(path)
  try:
    fps = _stream_fps(stream)
    return VideoInfo(
      width=stream.codec_context.width,
      height=stream.codec_context.height,
      fps=fps,
      num_frames=_declared_frames(container, stream, fps),
      duration_s=_duration_s(container, stream),
    )
  finally:
    container.close()


def iter_frames(
  path,
  *,
  fps: float | None = None,
  short_side: int | None = None,
  size: tuple[int, int] | None = None,
  max_frames: int | None = None,
) -> Iterator[np.ndarray]:
  """Yields (H, W, 3) uint8 RGB frames of `path`, subsampled and resized while decoding.

  Args:
    path: video file (any container/codec FFmpeg reads: mp4, avi, mov, mkv, ...).
    fps: target frame rate; source frames floor(k * source_fps / fps), k = 0, 1, ... are
      kept (never duplicated). None, or a rate >= the source rate, keeps every frame.
    short_side / size: see `output_size`.
    max_frames: stop after this many output frames (no truncation check then).

  Raises:
    VideoError: the file is missing, empty, not a video, corrupt, truncated, or gives no
      frames. The error is raised when the generator reaches the problem; `read_video`
      consumes it fully.
  """
  path = os.fspath(path)
  if fps is not None and fps <= 0:
    raise ValueError(f'fps must be positive, got {fps}.')
  if max_frames is not None and max_frames <= 0:
    raise ValueError(f'max_frames must be positive, got {max_frames}.')
  container, stream = _open(path)
  try:
    src_fps = _stream_fps(stream)
    declared = _declared_frames(container, stream, src_fps)
    # Kept source frames: floor(k * src_fps / fps) for k = 0, 1, ... (the rule of
    # `tfds_fogact.common.VideoBuilderConfig.frame_indices`), in exact rational arithmetic.
    step = (
      None
      if (fps is None or not src_fps or fps >= src_fps)
      else fractions.Fraction(src_fps).limit_denominator(1001)
      / fractions.Fraction(fps).limit_denominator(1001)
    )
    next_k = 0
    stream.thread_type = 'AUTO'
    out_hw = None
    n_decoded = 0
    n_out = 0
    try:
      for frame in container.decode(stream):
        index = n_decoded
        n_decoded += 1
        if step is not None:
          if index != math.floor(next_k * step):
            continue
          next_k += 1
        if out_hw is None:
          out_hw = output_size(frame.height, frame.width, short_side=short_side, size=size)
        rgb = frame.reformat(
          width=out_hw[1], height=out_hw[0], format='rgb24', interpolation='AREA'
        )
        yield rgb.to_ndarray()
        n_out += 1
        if max_frames is not None and n_out >= max_frames:
          return
    except av.error.FFmpegError as e:
      raise VideoError(
        path, f'corrupt video data: decoding failed after {n_decoded} frames ({e})'
      ) from e
    if n_decoded == 0:
      raise VideoError(path, 'no decodable video frames (empty or corrupt stream)')
    if _is_truncated(n_decoded, declared):
      raise VideoError(
        path, f'truncated: decoded {n_decoded} of {declared} frames the container declares'
      )
  finally:
    container.close()


def read_video(
  path,
  *,
  fps: float | None = None,
  short_side: int | None = None,
  size: tuple[int, int] | None = None,
  max_frames: int | None = None,
) -> tuple[np.ndarray, float]:
  """Decodes `path` into (frames (T, H, W, 3) uint8 RGB, output fps).

  Memory: frames are resized and subsampled as they are decoded, so only the reduced clip
  is held. Arguments as in `iter_frames`; the returned fps is the target `fps` when frames
  were dropped, else the source rate. Raises VideoError (see `iter_frames`).
  """
  if fps is not None and fps <= 0:
    raise ValueError(f'fps must be positive, got {fps}.')
  info = probe(path)
  src_fps = info.fps
  subsampled = fps is not None and bool(src_fps) and fps < src_fps
  # Frames are written into one array sized from the container's frame count (no list +
  # stack copy, which would double the peak); it grows if the count was low.
  estimate = info.num_frames
  if subsampled:
    estimate = math.ceil(estimate * fps / src_fps) + 1
  if max_frames is not None:
    estimate = min(estimate, max_frames)
  estimate = min(estimate, _MAX_PREALLOCATED_FRAMES)  # A corrupt header may claim anything.
  buf, n = None, 0
  for frame in iter_frames(path, fps=fps, short_side=short_side, size=size, max_frames=max_frames):
    if buf is None:
      buf = np.empty((max(estimate, 1),) + frame.shape, np.uint8)
    elif n == len(buf):
      buf = np.concatenate([buf, np.empty((max(len(buf) // 4, 8),) + frame.shape, np.uint8)])
    buf[n] = frame
    n += 1
  frames = buf[:n] if n > 0.9 * len(buf) else buf[:n].copy()
  out_fps = float(fps) if subsampled else src_fps
  return frames, out_fps


def trim_pair(
  clean: Sequence, foggy: Sequence, *, name: str = ''
) -> tuple[Sequence, Sequence, int]:
  """Trims two frame sequences (arrays, or lists of encoded frames) to their common
  length, logging a warning that says how much was dropped.

  Returns (clean, foggy, frames_dropped) where frames_dropped is |len(clean) - len(foggy)|
  (the tail of the longer stream is dropped, so frame i of one still matches frame i of
  the other).
  """
  n_clean, n_foggy = len(clean), len(foggy)
  if n_clean == n_foggy:
    return clean, foggy, 0
  n = min(n_clean, n_foggy)
  longer = 'clean' if n_clean > n_foggy else 'foggy'
  dropped = abs(n_clean - n_foggy)
  log.warning(
    '%s: clean has %d frames, foggy has %d; trimmed both to %d (dropped the last %d %s frame%s).',
    name or 'pair',
    n_clean,
    n_foggy,
    n,
    dropped,
    longer,
    '' if dropped == 1 else 's',
  )
  return clean[:n], foggy[:n], dropped


def write_video(
  path,
  frames: np.ndarray | Iterable[np.ndarray],
  fps: float,
  *,
  codec: str = 'libx264',
  quality: int = 18,
) -> int:
  """Writes RGB uint8 frames to `path`; returns the number of frames written.

  Args:
    path: output file; the container is chosen from the extension (.mp4, .avi, .mov, .mkv).
    frames: (T, H, W, 3) uint8 array or an iterable of (H, W, 3) uint8 frames (streamed).
    fps: frame rate (integer or fraction-friendly float).
    codec: 'libx264' (H.264, yuv420p: H and W must be even) or 'mpeg4'.
    quality: libx264 CRF (0 = lossless) or mpeg4 qscale (1 = best, 31 = worst); lower is
      better.
  """
  if codec not in ('libx264', 'mpeg4'):
    raise ValueError(f"codec must be 'libx264' or 'mpeg4', got {codec!r}.")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  n = 0
  with av.open(os.fspath(path), mode='w') as container:
    stream = None
    for frame in frames:
      frame = np.asarray(frame)
      if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(
          f'{path}: frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}.'
        )
      if stream is None:
        h, w = frame.shape[:2]
        if codec == 'libx264' and (h % 2 or w % 2):
          raise ValueError(f'{path}: libx264 with yuv420p needs even H and W, got {h}×{w}.')
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        if codec == 'libx264':
          stream.options = {'crf': str(quality), 'preset': 'veryfast'}
        else:
          # A fixed quantiser (what `ffmpeg -q:v` aims at; PyAV's qscale flag has
          # no effect here).
          stream.codec_context.qmin = stream.codec_context.qmax = quality
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
      n += 1
    if stream is None:
      raise ValueError(f'{path}: no frames to write.')
    for packet in stream.encode():
      container.mux(packet)
  return n
