"""Fog synthesis speed: milliseconds per 8x224x224 clip.

  python benchmarks/fog_synthesis.py [--frames 8] [--size 224] [--repeats 20]

Prints one row per variant, with the ratio to the homogeneous uint8 variant measured
in the same run.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from tfds_fogact import fog  # pylint: disable=g-import-not-at-top


def _time(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  clip_u8 = rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
  clip_f = clip_u8.astype(np.float32) / 255
  depth = fog.default_depth(args.size, args.size)
  variants = [
    ('light, heterogeneous, uint8', lambda: fog.apply_fog(clip_u8, intensity='light', seed=1)),
    ('dense, heterogeneous, uint8', lambda: fog.apply_fog(clip_u8, intensity='dense', seed=1)),
    ('dense, heterogeneous, float32', lambda: fog.apply_fog(clip_f, intensity='dense', seed=1)),
    (
      'dense, heterogeneous, depth map',
      lambda: fog.apply_fog(clip_u8, intensity='dense', seed=1, depth=depth),
    ),
    (
      'dense, homogeneous, uint8',
      lambda: fog.apply_fog(clip_u8, intensity='dense', seed=1, heterogeneous=False),
    ),
  ]
  results = [(name, _time(fn, args.repeats)) for name, fn in variants]
  base = dict(results)['dense, homogeneous, uint8']
  print(f'fog synthesis, {args.frames}x{args.size}x{args.size}x3 clip, median of {args.repeats}')
  print('| variant | ms / clip | ratio to homogeneous uint8 |')
  print('|---|---|---|')
  for name, ms in results:
    print(f'| {name} | {ms:.2f} | {ms / base:.2f} |')


if __name__ == '__main__':
  main()
