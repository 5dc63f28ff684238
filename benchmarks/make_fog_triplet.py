"""Draws docs/fog_triplet.png: clean / light fog / dense fog of the same frames.

The frames are rendered exactly as `synthetic_fog_act` renders them (same
renderer, depth map and `fog.apply_fog`), at the `large` config's 224x298 size,
for two clips of the test plan:

  python benchmarks/make_fog_triplet.py [--out docs/fog_triplet.png]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import matplotlib  # pylint: disable=g-import-not-at-top

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from tfds_fogact import fog  # pylint: disable=g-import-not-at-top
from tfds_fogact.synthetic_fog_act import renderer  # pylint: disable=g-import-not-at-top
from tfds_fogact.synthetic_fog_act import synthetic_fog_act_dataset_builder as sfa  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    '--out', default=os.path.join(os.path.dirname(__file__), '..', 'docs', 'fog_triplet.png')
  )
  parser.add_argument('--clips', default='8,45', help='indices into the test plan')
  args = parser.parse_args()
  cfg = next(c for c in sfa.SyntheticFogAct.BUILDER_CONFIGS if c.name == 'large')
  plan = sfa.clip_plan('test', 1, seed=cfg.seed)
  picks = [plan[int(i)] for i in args.clips.split(',')]
  h, w = cfg.frame_size
  fig, axes = plt.subplots(len(picks), 4, figsize=(4 * 3.2, len(picks) * 2.6), squeeze=False)
  for row, item in zip(axes, picks):
    spec = renderer.ClipSpec(
      item['label'], item['perspective'], item['scene'], cfg.num_frames, h, w, item['seed']
    )
    clean, depth = renderer.render_clip(spec)
    t = cfg.num_frames // 2
    panels = [
      ('clean', clean[t]),
      ('light fog', fog.apply_fog(clean, intensity='light', seed=item['seed'], depth=depth)[t]),
      ('dense fog', fog.apply_fog(clean, intensity='dense', seed=item['seed'], depth=depth)[t]),
      ('depth (relative distance)', depth[t]),
    ]
    for ax, (title, img) in zip(row, panels):
      ax.imshow(img, cmap='viridis' if img.ndim == 2 else None)
      ax.set_title(
        f'{title}'
        if title != 'clean'
        else f'clean: {renderer.CLASS_NAMES[item["label"]]}, {item["scene"]}, {item["perspective"]}',
        fontsize=8,
      )
      ax.axis('off')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(os.path.abspath(args.out))


if __name__ == '__main__':
  main()
