r"""Fog a video: the atmospheric scattering model of the dataset builders, on your own clips.

  python -m fognet_jax.fog_video IN.mp4 OUT.mp4 [--density light|dense|BETA] [--airlight A]
      [--depth homogeneous|DEPTH.npy] [--seed S]

* `--density`: 'light' or 'dense' draw beta and the airlight from the presets the builders
  use (`tfds_fogact.fog.PRESETS`, from `--seed`); a number is the extinction coefficient beta
  itself (airlight 0.8 unless `--airlight`).
* `--airlight`: the atmospheric light A in [0, 1] (grey), replacing the preset's draw.
* `--depth`: the relative scene distance d in [0, 1]. Default: the builders' ground-plane
  prior with drifting heterogeneous fog. 'homogeneous': d = 1 everywhere and no
  heterogeneity, i.e. one transmission t = exp(-beta) for every pixel (the common-practice
  homogeneous ASM). A .npy file: an (H, W) map at the video's size, with the heterogeneity.

The frames are read, fogged and written in chunks (memory does not grow with the video's
length), with the same result as fogging the whole clip at once (`tfds_fogact.fog.apply_fog`
with `start_frame`). Frame rate and size are kept; the output codec is H.264 (.mp4, .mkv,
.mov) or MPEG-4 Part 2 (.avi). The video is written to a hidden temporary file next to OUT,
renamed to OUT once complete: an interrupted run (Ctrl-C, SIGTERM) leaves no output.

The console shows the progress and the result only; `--verbose` lets the libraries' log
messages and warnings through.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Optional
from typing import Sequence

import numpy as np

from fognet_jax import metrics as metrics_lib
from tfds_fogact import fog as fog_lib
from tfds_fogact import video_io

CHUNK_FRAMES = 16
# Output container (extension) -> codec.
CODECS = {'.mp4': 'libx264', '.mkv': 'libx264', '.mov': 'libx264', '.avi': 'mpeg4'}


def fog_params(density: str, airlight: Optional[float], seed: int) -> fog_lib.FogParams:
  """The clip's FogParams from `--density` (a preset name or beta) and `--airlight`."""
  if density in fog_lib.PRESETS:
    params = fog_lib.sample_params(density, seed)
  else:
    try:
      beta = float(density)
    except ValueError:
      raise ValueError(
        f'--density must be one of {sorted(fog_lib.PRESETS)} or a number (beta), got {density!r}'
      ) from None
    params = fog_lib.FogParams(beta=beta)
  if airlight is not None:
    if not 0.0 <= airlight <= 1.0:
      raise ValueError(f'--airlight must be in [0, 1], got {airlight}')
    params = dataclasses.replace(params, airlight=float(airlight))
  return params


def load_depth(depth: Optional[str], height: int, width: int):
  """(depth map or None = the prior, heterogeneous) from `--depth`."""
  if depth is None:
    return None, True
  if depth == 'homogeneous':
    return np.ones((height, width), np.float32), False
  if not os.path.isfile(depth):
    raise FileNotFoundError(f"--depth: {depth} does not exist (use 'homogeneous' or a .npy file)")
  try:
    d = np.load(depth)
  except (ValueError, OSError) as e:
    raise ValueError(f'--depth: {depth} is not a NumPy .npy file ({e})') from e
  if d.shape != (height, width):
    raise ValueError(
      f'--depth: {depth} has shape {d.shape}; the video is {height}x{width} '
      '(an (H, W) map is needed)'
    )
  if not np.all(np.isfinite(d)) or d.min() < 0 or d.max() > 1:
    raise ValueError(
      f'--depth: {depth} must hold relative distances in [0, 1], got [{d.min()}, {d.max()}]'
    )
  return d.astype(np.float32), True


def fog_video(
  src: str,
  dst: str,
  *,
  density: str = 'light',
  airlight: Optional[float] = None,
  depth: Optional[str] = None,
  seed: int = 0,
  progress: bool = True,
) -> int:
  """Writes the fogged `src` to `dst`; returns the number of frames.

  Raises FileNotFoundError / video_io.VideoError naming `src`, ValueError for bad options.
  """
  if not os.path.isfile(src):
    raise FileNotFoundError(f'{src}: no such file')
  ext = os.path.splitext(dst)[1].lower()
  if ext not in CODECS:
    raise ValueError(
      f'{dst}: unsupported output format {ext or "(no extension)"}; supported: '
      '.mp4, .mkv, .mov (H.264), .avi (MPEG-4)'
    )
  info = video_io.probe(src)  # VideoError naming the file when it is not a video
  params = fog_params(density, airlight, seed)
  d, heterogeneous = load_depth(depth, info.height, info.width)
  if os.path.abspath(src) == os.path.abspath(dst):
    raise ValueError(f'{dst}: the output must not overwrite the input')
  codec = CODECS[ext]
  bar = metrics_lib.Progress(
    max(info.num_frames, 1), enabled=progress, stream=sys.stderr, unit='frame'
  )

  def fogged():
    frames = video_io.iter_frames(src)
    start = 0
    while True:
      if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
      chunk = list(itertools.islice(frames, CHUNK_FRAMES))
      if not chunk:
        return
      out = fog_lib.apply_fog(
        np.stack(chunk),
        intensity=params,
        seed=seed,
        depth=d,
        heterogeneous=heterogeneous,
        start_frame=start,
      )
      yield from out
      start += len(chunk)
      # On a terminal the bar redraws; in a log a line every ~10 %.
      every = max(info.num_frames // 10, CHUNK_FRAMES)
      bar.update(start, {} if start % every < len(chunk) else None)

  directory, name = os.path.split(os.path.abspath(dst))
  os.makedirs(directory, exist_ok=True)
  # The container follows the extension, so the temporary file keeps it.
  partial = os.path.join(directory, f'.{os.path.splitext(name)[0]}.partial-{os.getpid()}{ext}')
  try:
    n = video_io.write_video(
      partial, fogged(), info.fps, codec=codec, quality=2 if codec == 'mpeg4' else 18
    )  # both near-transparent
    os.replace(partial, dst)
  except BaseException:
    if os.path.exists(partial):
      os.remove(partial)  # no half-written output left behind
    raise
  finally:
    bar.close()
  return n


@contextlib.contextmanager
def _library_output(verbose: bool):
  """Without `verbose`: no log records below CRITICAL and no Python warnings."""
  if verbose:
    yield
    return
  previous = logging.root.manager.disable
  logging.disable(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      yield
  finally:
    logging.disable(previous)


# Set by `_interrupts`' handler on SIGINT or SIGTERM, checked between chunks: it still stops
# a run whose KeyboardInterrupt a library call swallowed.
_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _interrupts():
  """SIGTERM and SIGINT raise KeyboardInterrupt (main thread only); yields the list that
  records which. The signal is also kept in `_INTERRUPTED`, which `fog_video` checks between
  chunks: an interrupt raised inside a library call that swallows it still stops the run."""
  received = []
  _INTERRUPTED.clear()
  if threading.current_thread() is not threading.main_thread():
    yield received
    return

  def handler(signum, frame):  # pylint: disable=unused-argument
    received.append(signum)
    _INTERRUPTED.set()
    raise KeyboardInterrupt

  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)
    _INTERRUPTED.clear()


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m fognet_jax.fog_video',
    description='Adds atmospheric-scattering-model fog to a video (as the dataset builders do).',
  )
  parser.add_argument('input', help='clean video (any format FFmpeg reads)')
  parser.add_argument('output', help='foggy video to write (.mp4, .mkv, .mov: H.264; .avi: MPEG-4)')
  parser.add_argument(
    '--density',
    default='light',
    help="'light', 'dense' (the builders' presets) or beta, a number (default light)",
  )
  parser.add_argument(
    '--airlight',
    type=float,
    default=None,
    help='atmospheric light A in [0, 1] (default: the preset draw, or 0.8)',
  )
  parser.add_argument(
    '--depth',
    default=None,
    help="'homogeneous' (one transmission for every pixel) or an (H, W) .npy "
    'relative-distance map (default: the ground-plane prior)',
  )
  parser.add_argument('--seed', type=int, default=0, help='seed of the fog draw (default 0)')
  parser.add_argument(
    '--verbose', action='store_true', help="show the libraries' log messages and warnings"
  )
  args = parser.parse_args(argv)
  with _interrupts() as received, _library_output(args.verbose):
    try:
      n = fog_video(
        args.input,
        args.output,
        density=args.density,
        airlight=args.airlight,
        depth=args.depth,
        seed=args.seed,
      )
    except (FileNotFoundError, ValueError, video_io.VideoError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    except KeyboardInterrupt:
      print(f'interrupted: {args.output} was not written', file=sys.stderr)
      return 128 + (received[0] if received else signal.SIGINT)
  print(f'{args.output}: {n} frames', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
