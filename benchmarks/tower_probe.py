r"""How fast an image tower learns the generated benchmark's actions, without FogNet.

A probe of the input signal for small towers trained from scratch (used to tune
`configs/synthetic.py`): one image tower encodes T frames of the FOGGY stream, the frame
embeddings are averaged, a linear head and cross-entropy train it (Adam, warm-up + cosine).
No text tower, no clean stream, no FogNet module. Prints train / test Top-1 every 100 steps
and, at the end, Top-1 per perspective and per class and the "pair-level" Top-1 (a
prediction counts when it is the label or the label's temporal / mirror twin: a mean over
frames cannot tell a clip from its time reversal).

  python benchmarks/tower_probe.py --data_dir=/tmp/tfds --tower=vit --steps=600
  python benchmarks/tower_probe.py --data_dir=/tmp/tfds --tower=cnn --steps=1200

Towers: `vit` (CLIP's ViT, the `tiny` preset at 64x64 with --patch / --width / --layers;
--pool=cls reads the class token as CLIP does, --pool=mean averages the patch tokens),
`rn` (CLIP's ModifiedResNet, `tiny-rn` with --width as stem width) and `cnn` (four 3x3
stride-2 ReLU convolutions, 32-64-128-128 channels, global mean pool: a plain reference).
--center subtracts each clip's mean frame first (`model.frame_centering`).
Builds `synthetic_fog_act/default` in --data_dir if it is not there.
"""

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from flax import nnx

_DATA = flags.DEFINE_string('data_dir', None, 'TFDS data dir (built if missing).', required=True)
_TOWER = flags.DEFINE_enum('tower', 'vit', ['vit', 'rn', 'cnn'], 'Image tower.')
_POOL = flags.DEFINE_enum('pool', 'cls', ['cls', 'mean'], 'ViT read-out.')
_PATCH = flags.DEFINE_integer('patch', 8, 'ViT patch size.')
_WIDTH = flags.DEFINE_integer('width', 0, 'ViT width / ResNet stem width (0: the preset).')
_LAYERS = flags.DEFINE_integer('layers', 0, 'ViT layers (0: the preset).')
_CENTER = flags.DEFINE_bool('center', True, "Subtract each clip's mean frame.")
_FRAMES = flags.DEFINE_integer('frames', 4, 'Frames per clip.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Clips per step.')
_STEPS = flags.DEFINE_integer('steps', 600, 'Training steps.')
_LR = flags.DEFINE_float('lr', 2e-3, 'Peak learning rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and the batches.')

# Label of each class's temporal / mirror twin (renderer.CLASS_NAMES order).
TWIN = np.array([1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 10, 11, 12, 13])


def load(data_dir):
  """(frames uint8 (N, 16, H, W, 3), labels, perspective ids) of both splits, foggy stream."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
  from fognet_jax import records  # pylint: disable=g-import-not-at-top
  from tfds_fogact import common  # pylint: disable=g-import-not-at-top

  cfg = config_lib.load_config('fogact').data
  cfg.dataset, cfg.data_dir = 'synthetic_fog_act', data_dir
  records.prepare(cfg)
  out = {}
  for split in ('train', 'test'):
    src = tfds.data_source('synthetic_fog_act', split=split, data_dir=data_dir)
    x, y, p = [], [], []
    for i in range(len(src)):
      ex = src[i]
      x.append(np.stack([np.asarray(f) for f in ex['foggy']]))
      y.append(int(ex['label']))
      persp = ex['perspective']  # a ClassLabel: its index
      if isinstance(persp, (bytes, str)):
        persp = common.PERSPECTIVES.index(persp.decode() if isinstance(persp, bytes) else persp)
      p.append(int(persp))
    out[split] = (np.stack(x), np.array(y), np.array(p))
  return out


class CNN(nnx.Module):
  def __init__(self, rngs):
    chans = (3, 32, 64, 128, 128)
    self.convs = nnx.List(
      [nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in zip(chans[:-1], chans[1:])]
    )
    self.out = nnx.Linear(128, 32, rngs=rngs)

  def __call__(self, x):
    for c in self.convs:
      x = jax.nn.relu(c(x))
    return self.out(x.mean((1, 2)))


class Probe(nnx.Module):
  def __init__(self, rngs):
    from fognet_jax.models import clip  # pylint: disable=g-import-not-at-top

    seed = _SEED.value
    if _TOWER.value == 'cnn':
      self.tower, dim = CNN(rngs), 32
    elif _TOWER.value == 'rn':
      over = {'vision_width': _WIDTH.value} if _WIDTH.value else {}
      self.tower = clip.create('tiny-rn', seed=seed, **over).visual
      dim = self.tower.config.embed_dim
    else:
      over = dict(image_size=64, patch_size=_PATCH.value)
      if _WIDTH.value:
        over['vision_width'] = _WIDTH.value
      if _LAYERS.value:
        over['vision_layers'] = _LAYERS.value
      self.tower = clip.create('tiny', seed=seed, **over).visual
      dim = self.tower.config.embed_dim
    self.head = nnx.Linear(dim, 14, rngs=rngs)

  def encode(self, x):
    if _TOWER.value == 'vit' and _POOL.value == 'mean':
      v = self.tower
      return v.ln_post(v.tokens(x)[:, 1:].mean(1)) @ v.proj[...]
    return self.tower(x)

  def __call__(self, x):  # (B, T, H, W, 3)
    if _CENTER.value:
      x = x - x.mean(1, keepdims=True)
    b, t = x.shape[:2]
    e = self.encode(x.reshape((b * t,) + x.shape[2:])).reshape(b, t, -1)
    return self.head(e.mean(1))


def main(argv):
  del argv
  from fognet_jax import augment  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  data = load(_DATA.value)
  xtr, ytr, _ = data['train']
  xte, yte, pte = data['test']
  print(f'loaded {len(xtr)} train / {len(xte)} test clips in {time.time() - t0:.0f} s', flush=True)
  t_, n16 = _FRAMES.value, xtr.shape[1]
  seg = n16 // t_
  rng = np.random.default_rng(_SEED.value)
  prep = augment.normalize
  model = Probe(nnx.Rngs(_SEED.value))
  steps = _STEPS.value
  sched = optax.warmup_cosine_decay_schedule(0.0, _LR.value, min(100, steps // 10), steps)
  opt = nnx.Optimizer(model, optax.adam(sched), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (
        logits.argmax(-1) == y
      ).mean()

    (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss, acc

  predict = nnx.jit(lambda m, x: m(x).argmax(-1))
  eval_idx = np.arange(t_) * seg + seg // 2

  def test_predictions():
    return np.concatenate(
      [
        np.asarray(predict(model, jnp.asarray(prep(xte[i : i + 56][:, eval_idx]))))
        for i in range(0, len(xte), 56)
      ]
    )

  perm, accs = np.array([], int), []
  t0 = time.time()
  for i in range(steps):
    if len(perm) < _BATCH.value:
      perm = np.concatenate([perm, rng.permutation(len(xtr))])
    idx, perm = perm[: _BATCH.value], perm[_BATCH.value :]
    x = np.stack([xtr[j][np.arange(t_) * seg + rng.integers(0, seg, t_)] for j in idx])
    _, acc = step(model, opt, jnp.asarray(prep(x)), jnp.asarray(ytr[idx]))
    accs.append(float(acc))
    if (i + 1) % 100 == 0 or i + 1 == steps:
      top1 = float((test_predictions() == yte).mean())
      print(
        f'step {i + 1}: train Top-1 (last 100 batches) {np.mean(accs[-100:]):.3f}  '
        f'test Top-1 {top1:.3f}  ({time.time() - t0:.0f} s)',
        flush=True,
      )
  pred = test_predictions()
  ok = pred == yte
  from tfds_fogact import common  # pylint: disable=g-import-not-at-top

  print(
    'per perspective:',
    {p: round(float(ok[pte == k].mean()), 3) for k, p in enumerate(common.PERSPECTIVES)},
  )
  print('per class:', [round(float(ok[yte == k].mean()), 2) for k in range(14)])
  print(f'test Top-1 {ok.mean():.3f}, pair-level Top-1 {np.mean(ok | (pred == TWIN[yte])):.3f}')


if __name__ == '__main__':
  app.run(main)
