"""Time of one training-loss forward + backward (eq. 11, jit, after warm-up).

Every variant runs the same step function: text tower on one prompt per class, CLIP image
tower on the frames, FogNet / ActionCLIP head, ``losses.fognet_loss``, ``jax.grad`` w.r.t.
all parameters. Variants (Table 5a rows and the non-default switches) are timed in one
process, interleaved round by round; the table gives the median over ``--reps`` rounds and
the ratio to the ActionCLIP baseline measured in the same run.

    python benchmarks/loss_step.py                      # tiny CLIP, B=8, T=8, 32x32, fp32
    python benchmarks/loss_step.py --backbone ViT-B/16 --image_size 224 --batch 8 \
        --dtype bfloat16 --attention_impl xla --variants baseline,fognet  # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from fognet_jax import config_lib  # noqa: E402
from fognet_jax import losses  # noqa: E402
from fognet_jax import weights  # noqa: E402

VARIANTS = {
  'baseline': dict(arch='actionclip'),
  'baseline_transf': dict(arch='actionclip', temporal_fusion='transformer'),
  'two_stream_none': {'fas.enabled': False, 'me.enabled': False, 'csa.enabled': False},
  'fas': {'me.enabled': False, 'csa.enabled': False},
  'fas+me': {'csa.enabled': False},
  'fognet': {},
  'fognet_param_free_fas': {'fas.parameter_free': True},
}


def make_cfg(args, changes):
  cfg = config_lib.load_config('fogact').model
  cfg.init_from = None
  cfg.backbone = args.backbone
  cfg.dtype = args.dtype
  cfg.remat = args.remat
  if args.image_size:
    cfg.clip_overrides.image_size = args.image_size
  for key, value in changes.items():
    block, _, leaf = key.rpartition('.')
    (cfg[block] if block else cfg)[leaf] = value
  return cfg


def build_step(cfg, args):
  model = weights.create_model(cfg, rngs=nnx.Rngs(0), attention_impl=args.attention_impl)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss_cfg = config_lib.load_config('fogact').loss

  @jax.jit
  def step(params, rest, clean, foggy, tokens, labels):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest)
      out = m.train_outputs(clean, foggy, m.encode_text(tokens))
      return losses.fognet_loss(out, labels, loss_cfg, cfg)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads

  rng = np.random.default_rng(0)
  size = model.clip.config.image_size
  clean = rng.normal(size=(args.batch, args.frames, size, size, 3)).astype(np.float32)
  foggy = (0.6 * clean + 0.4 * rng.normal(size=clean.shape)).astype(np.float32)
  ctx = model.clip.config.context_length
  tokens = rng.integers(1, 1000, size=(args.classes, ctx)).astype(np.int32)
  tokens[:, 8] = model.clip.config.vocab_size - 1
  labels = rng.integers(0, args.classes, size=args.batch).astype(np.int32)
  batch = [jax.device_put(x) for x in (clean, foggy, tokens, labels)]
  return lambda: jax.block_until_ready(step(params, rest, *batch))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--backbone', default='tiny')
  parser.add_argument('--image_size', type=int, default=0, help="0 = the backbone's")
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--remat', action='store_true')
  parser.add_argument('--attention_impl', default=None, choices=[None, 'xla', 'cudnn'])
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--reps', type=int, default=10)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  args = parser.parse_args()
  names = args.variants.split(',')
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f'unknown --variants {unknown}; known: {list(VARIANTS)}')

  steps, compile_s = {}, {}
  for name in names:
    t0 = time.perf_counter()
    steps[name] = build_step(make_cfg(args, VARIANTS[name]), args)
    for _ in range(args.warmup):
      steps[name]()
    compile_s[name] = time.perf_counter() - t0
  times = {n: [] for n in names}
  for _ in range(args.reps):
    for name in names:
      t0 = time.perf_counter()
      steps[name]()
      times[name].append(time.perf_counter() - t0)

  ref = statistics.median(times[names[0]])
  print(
    f'# loss forward+backward, backbone={args.backbone}, B={args.batch}, T={args.frames}, '
    f'dtype={args.dtype}, remat={args.remat}, attention={args.attention_impl}, device={jax.devices()[0].device_kind}, '
    f'{platform.machine()}'
  )
  print(f'{"variant":<24} {"median ms":>10} {"min ms":>8} {"ratio":>6} {"build+warmup s":>15}')
  for name in names:
    med, best = statistics.median(times[name]), min(times[name])
    print(
      f'{name:<24} {med * 1e3:>10.1f} {best * 1e3:>8.1f} {med / ref:>6.2f} {compile_s[name]:>15.1f}'
    )


if __name__ == '__main__':
  main()
