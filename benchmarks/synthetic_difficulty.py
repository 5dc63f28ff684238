"""Is `synthetic_fog_act` learnable, and does fog hurt? A small conv-net proxy.

Trains a 3-layer per-frame conv net on (frame, frame difference) inputs with a
linear temporal head, on CLEAN training clips only (8 frames at 48x48, centre
view, no augmentation), then reports Top-1 on the clean and the foggy test clips
(light and dense separately). Chance is 1/14. This is a data sanity check, not
the FogNet model:

  python benchmarks/synthetic_difficulty.py [--data_dir DIR] [--epochs 30] [--manual_dir M]

`--manual_dir` (a directory with `generation.json`, see the builder) builds a smaller copy,
e.g. {"train_per_group": 6, "test_per_group": 3, "num_frames": 8}, in `--data_dir`.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from fognet_jax import augment  # pylint: disable=g-import-not-at-top
from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
from fognet_jax import records  # pylint: disable=g-import-not-at-top


def load(cfg, split, stream):
  src = records.source(cfg, split)
  xs, ys, fogs = [], [], []
  for i in range(len(src)):
    ex = src[i]
    xs.append(augment.make_eval_views({'foggy': ex[stream]}, cfg)[0])  # (T, S, S, 3)
    ys.append(ex['label'])
    fogs.append(ex['fog'])
  return np.stack(xs), np.asarray(ys), np.asarray(fogs)


def conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def init(key, num_frames, num_classes):
  ks = jax.random.split(key, 4)
  he = lambda k, shape: jax.random.normal(k, shape) * np.sqrt(2 / np.prod(shape[:-1]))  # noqa: E731
  return dict(
    c1=he(ks[0], (3, 3, 6, 32)),
    c2=he(ks[1], (3, 3, 32, 64)),
    c3=he(ks[2], (3, 3, 64, 64)),
    t=he(ks[3], (num_frames * 64, 128)),
    o=jnp.zeros((128, num_classes)),
  )


def forward(p, x):
  """x: (B, T, H, W, 3) -> logits (B, C)."""
  d = jnp.concatenate([x[:, 1:] - x[:, :-1], jnp.zeros_like(x[:, :1])], 1)
  b, t, h, w, _ = x.shape
  z = jnp.concatenate([x, d], -1).reshape(b * t, h, w, 6)  # (B*T, H, W, 6)
  for k in ('c1', 'c2', 'c3'):
    z = jax.nn.relu(conv(z, p[k]))
  z = z.max((1, 2)).reshape(b, t * z.shape[-1])  # (B, T*64)
  return jax.nn.relu(z @ p['t']) @ p['o']


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--manual_dir', default=None)
  args = parser.parse_args()
  cfg = config_lib.load_config('fogact').data
  cfg.dataset, cfg.data_dir = 'synthetic_fog_act', args.data_dir
  cfg.manual_dir = args.manual_dir
  cfg.image_size, cfg.num_frames, cfg.augment.enabled = 48, 8, False
  info = records.prepare(cfg)
  xtr, ytr, _ = load(cfg, 'train', 'clean')
  xte, yte, fte = load(cfg, 'test', 'clean')
  xtf, _, _ = load(cfg, 'test', 'foggy')
  params = init(jax.random.PRNGKey(0), cfg.num_frames, len(info.class_names))
  opt = optax.adamw(2e-3, weight_decay=1e-2)
  state = opt.init(params)

  @jax.jit
  def step(p, s, x, y):
    loss, g = jax.value_and_grad(
      lambda q: optax.softmax_cross_entropy_with_integer_labels(forward(q, x), y).mean()
    )(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  predict = jax.jit(lambda p, x: forward(p, x).argmax(-1))

  def top1(x, y):
    pred = np.concatenate(
      [np.asarray(predict(params, x[i : i + 56])) for i in range(0, len(x), 56)]
    )
    return float(np.mean(pred == y))

  rng = np.random.default_rng(0)
  start = time.time()
  for _ in range(args.epochs):
    perm = rng.permutation(len(xtr))
    for i in range(0, len(perm) - 31, 32):
      params, state, _ = step(params, state, xtr[perm[i : i + 32]], ytr[perm[i : i + 32]])
  light, dense = fte == 0, fte == 1
  print(
    f'trained {args.epochs} epochs on {len(xtr)} clean clips in {time.time() - start:.0f} s; '
    f'chance {1 / len(info.class_names):.3f}'
  )
  print('| test stream | Top-1 |')
  print('|---|---|')
  for name, value in [
    ('train (clean)', top1(xtr, ytr)),
    ('clean', top1(xte, yte)),
    ('foggy (light + dense)', top1(xtf, yte)),
    ('foggy, light', top1(xtf[light], yte[light])),
    ('foggy, dense', top1(xtf[dense], yte[dense])),
  ]:
    print(f'| {name} | {value:.3f} |')


if __name__ == '__main__':
  main()
