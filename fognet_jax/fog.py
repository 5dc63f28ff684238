r"""Fog a video: the atmospheric scattering model of the dataset builders, on your own clips.

  python -m fognet_jax.fog IN.mp4 OUT.mp4 [--density light|dense|BETA] [--airlight A]
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
.mov) or MPEG-4 Part 2 (.avi).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from typing import Optional, Sequence

import numpy as np

from fognet_jax import metrics as metrics_lib
from tfds_fogact import fog as fog_lib
from tfds_fogact import video_io

CHUNK_FRAMES = 16


def fog_params(density: str, airlight: Optional[float], seed: int) -> fog_lib.FogParams:
  """The clip's FogParams from `--density` (a preset name or beta) and `--airlight`."""
  if density in fog_lib.PRESETS:
    params = fog_lib.sample_params(density, seed)
  else:
    try:
      beta = float(density)
    except ValueError:
      raise ValueError(f"--density must be one of {sorted(fog_lib.PRESETS)} or a number (beta), "
                       f"got {density!r}") from None
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
    raise ValueError(f'--depth: {depth} has shape {d.shape}; the video is {height}x{width} '
                     '(an (H, W) map is needed)')
  if not np.all(np.isfinite(d)) or d.min() < 0 or d.max() > 1:
    raise ValueError(f'--depth: {depth} must hold relative distances in [0, 1], got '
                     f'[{d.min()}, {d.max()}]')
  return d.astype(np.float32), True


def fog_video(src: str, dst: str, *, density: str = 'light', airlight: Optional[float] = None,
              depth: Optional[str] = None, seed: int = 0, progress: bool = True) -> int:
  """Writes the fogged `src` to `dst`; returns the number of frames.

  Raises FileNotFoundError / video_io.VideoError naming `src`, ValueError for bad options.
  """
  if not os.path.isfile(src):
    raise FileNotFoundError(f'{src}: no such file')
  info = video_io.probe(src)  # VideoError naming the file when it is not a video
  params = fog_params(density, airlight, seed)
  d, heterogeneous = load_depth(depth, info.height, info.width)
  if os.path.abspath(src) == os.path.abspath(dst):
    raise ValueError(f'{dst}: the output must not overwrite the input')
  codec = 'mpeg4' if dst.lower().endswith('.avi') else 'libx264'
  bar = metrics_lib.Progress(max(info.num_frames, 1), enabled=progress, stream=sys.stderr,
                             unit='frame')

  def fogged():
    frames = video_io.iter_frames(src)
    start = 0
    while True:
      chunk = list(itertools.islice(frames, CHUNK_FRAMES))
      if not chunk:
        return
      out = fog_lib.apply_fog(np.stack(chunk), intensity=params, seed=seed, depth=d,
                              heterogeneous=heterogeneous, start_frame=start)
      yield from out
      start += len(chunk)
      # On a terminal the bar redraws; in a log a line every ~10 %.
      every = max(info.num_frames // 10, CHUNK_FRAMES)
      bar.update(start, {} if start % every < len(chunk) else None)

  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  try:
    n = video_io.write_video(dst, fogged(), info.fps, codec=codec,
                             quality=2 if codec == 'mpeg4' else 18)  # both near-transparent
  except BaseException:
    if os.path.exists(dst):
      os.remove(dst)  # no half-written output left behind
    raise
  finally:
    bar.close()
  return n


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m fognet_jax.fog',
      description='Adds atmospheric-scattering-model fog to a video (as the dataset builders do).')
  parser.add_argument('input', help='clean video (any format FFmpeg reads)')
  parser.add_argument('output', help='foggy video to write (.mp4, .mkv, .mov: H.264; .avi: MPEG-4)')
  parser.add_argument('--density', default='light',
                      help="'light', 'dense' (the builders' presets) or beta, a number (default light)")
  parser.add_argument('--airlight', type=float, default=None,
                      help='atmospheric light A in [0, 1] (default: the preset draw, or 0.8)')
  parser.add_argument('--depth', default=None,
                      help="'homogeneous' (one transmission for every pixel) or an (H, W) .npy "
                           'relative-distance map (default: the ground-plane prior)')
  parser.add_argument('--seed', type=int, default=0, help='seed of the fog draw (default 0)')
  args = parser.parse_args(argv)
  try:
    n = fog_video(args.input, args.output, density=args.density, airlight=args.airlight,
                  depth=args.depth, seed=args.seed)
  except (FileNotFoundError, ValueError, video_io.VideoError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{args.output}: {n} frames', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
