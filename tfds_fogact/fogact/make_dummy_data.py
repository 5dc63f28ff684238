"""Writes the FogAct builder's dummy_data/ (tiny generated videos, 32×24 px).

  python -m tfds_fogact.fogact.make_dummy_data [--out DIR]

The layout is the annotated one (classes.txt + annotations.csv): 3 classes, 7 clips, two
with an explicit split and five without (the seeded stratified split gives 'test' 1 of the
3 'wave' clips and 0 of the 2 'jump' clips: 5 train / 2 test), the four containers, and one
pair whose foggy video is one frame shorter (trimmed at build time).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil

import numpy as np

from tfds_fogact import video_io

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ['walk', 'wave', 'jump']
# clip_id, label, clean ext, split, perspective, fog, num frames of foggy - clean
CLIPS = [
  ('c0', 'walk', 'mp4', 'train', 'front', 'light', 0),
  ('c1', 'walk', 'avi', 'test', 'back', 'dense', 0),
  ('c2', 'wave', 'mkv', '', 'left', 'light', 0),
  ('c3', 'wave', 'mov', '', 'right', 'dense', -1),
  ('c4', 'wave', 'mp4', '', '', '', 0),
  ('c5', 'jump', 'mp4', '', 'front', 'light', 0),
  ('c6', 'jump', 'avi', '', 'back', 'dense', 0),
]


def tiny_clip(seed: int, num_frames: int = 10, height: int = 24, width: int = 32) -> np.ndarray:
  """(T, H, W, 3) uint8: a coloured square moving over a gradient, fixed by `seed`."""
  rng = np.random.default_rng(seed)
  y = np.linspace(40, 200, height, dtype=np.float32)[:, None, None]
  bg = np.broadcast_to(y, (height, width, 3)) * rng.uniform(0.6, 1.0, 3).astype(np.float32)
  frames = np.repeat(bg[None], num_frames, axis=0).copy()
  colour = rng.integers(0, 256, 3)
  x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
  vx, vy = rng.integers(-2, 3, 2)
  for t in range(num_frames):
    x, yy = (x0 + vx * t) % (width - 8), (y0 + vy * t) % (height - 8)
    frames[t, yy : yy + 8, x : x + 8] = colour
  return frames.astype(np.uint8)


def haze(frames: np.ndarray, amount: float = 0.6) -> np.ndarray:
  """A cheap stand-in for fog: blend toward light grey (the builder does not care)."""
  return (frames * (1 - amount) + 200 * amount).astype(np.uint8)


def codec_for(ext: str) -> str:
  return 'mpeg4' if ext == 'avi' else 'libx264'


def main(out: str) -> None:
  if os.path.isdir(out):
    shutil.rmtree(out)
  os.makedirs(os.path.join(out, 'videos', 'clean'))
  os.makedirs(os.path.join(out, 'videos', 'foggy'))
  with open(os.path.join(out, 'classes.txt'), 'w') as f:
    f.write('\n'.join(CLASSES) + '\n')
  rows = []
  for i, (clip_id, label, ext, split, persp, fog, dfoggy) in enumerate(CLIPS):
    frames = tiny_clip(i)
    clean = f'videos/clean/{clip_id}.{ext}'
    foggy = f'videos/foggy/{clip_id}.{ext}'
    video_io.write_video(os.path.join(out, clean), frames, 25, codec=codec_for(ext))
    foggy_frames = haze(frames)[: len(frames) + dfoggy]
    video_io.write_video(os.path.join(out, foggy), foggy_frames, 25, codec=codec_for(ext))
    rows.append([clip_id, label, clean, foggy, f'scene{i % 2}', persp, fog, split, i % 3])
  with open(os.path.join(out, 'annotations.csv'), 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(
      ['clip_id', 'label', 'clean', 'foggy', 'scene', 'perspective', 'fog', 'split', 'num_people']
    )
    w.writerows(rows)
  print(f'wrote {len(rows)} pairs to {out}')


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(HERE, 'dummy_data'))
  main(parser.parse_args().out)
