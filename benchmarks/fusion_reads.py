"""Does the backward pass recompute the residual stream's gradient? With and without
``clip.keep_gradient``, on this machine's platform.

Compiles the gradient of ``sum(encode_image(x)**2)`` with respect to every parameter of a CLIP
image tower twice: with ``keep_gradient`` the identity (``clip.KEEP_GRADIENT_PLATFORMS = ()``)
and with it storing the gradient on this platform. For each compiled module it counts, per
fusion, the operands shaped like the residual stream (``(N*L, width)`` or ``(N, L, width)``):
a fusion that recomputes the stream's gradient from the later blocks' contributions reads
many of them. Then it times both, alternating, and checks that the gradients agree.

    python benchmarks/fusion_reads.py                                   # ViT-B/16, 8 images, fp32
    python benchmarks/fusion_reads.py --images=256 --dtype=bfloat16     # the GPU step's tower
    python benchmarks/fusion_reads.py --model=tiny --images=4 --reps=3 --json_out=/tmp/r.json

On CPU the stored gradient is the default (``KEEP_GRADIENT_PLATFORMS = ('cpu',)``); on a GPU
this script is how to find out whether it should be.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from fognet_jax.models import clip  # pylint: disable=g-import-not-at-top

_NAME = r'%[\w.\-]+'
_SHAPE = r'\w+\[[\d,]*\]'


def stream_operands(hlo_text: str, shapes: set[str]) -> list[int]:
  """For each fusion instruction of a compiled module's text (every computation), how many of
  its operands have one of ``shapes`` (e.g. ``{'f32[3152,768]'}``), largest first."""
  defined = dict(re.findall(rf'({_NAME}) = ({_SHAPE})', hlo_text))
  counts = []
  for m in re.finditer(rf'= \S+ fusion\(([^)]*)\)', hlo_text):
    counts.append(sum(defined.get(o.strip()) in shapes for o in m.group(1).split(',')))
  return sorted(counts, reverse=True)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='ViT-B/16', choices=sorted(clip.CONFIGS))
  parser.add_argument('--images', type=int, default=8, help='images per call')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--reps', type=int, default=5, help='timed calls of each, alternating')
  parser.add_argument('--json_out', default=None)
  args = parser.parse_args(argv)

  platform = jax.devices()[0].platform
  cfg = clip.get_config(args.model)
  if cfg.is_resnet:
    parser.error(f'--model={args.model}: a ResNet tower has no residual stream of tokens')
  model = clip.create(cfg, dtype=getattr(jnp, args.dtype), seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(0), (args.images, cfg.image_size, cfg.image_size, 3))
  tokens = (cfg.image_size // cfg.patch_size)**2 + 1
  shapes = {f'f32[{args.images * tokens},{cfg.vision_width}]',
            f'f32[{args.images},{tokens},{cfg.vision_width}]'}

  def loss(p, x):
    return jnp.sum(nnx.merge(graphdef, p, rest).encode_image(x).astype(jnp.float32)**2)

  default = clip.KEEP_GRADIENT_PLATFORMS
  modes = {'plain': (), 'kept': (platform,)}  # 'gpu': clip.keep_gradient takes it for cuda/rocm
  compiled, report = {}, {}
  try:
    for name, platforms in modes.items():
      clip.KEEP_GRADIENT_PLATFORMS = platforms
      t0 = time.perf_counter()
      compiled[name] = jax.jit(jax.grad(loss)).lower(params, x).compile()
      compile_s = time.perf_counter() - t0
      text = compiled[name].as_text()
      counts = stream_operands(text, shapes)
      report[name] = {'compile_s': compile_s, 'fusions': len(counts),
                      'stream_operands': sum(counts), 'largest': counts[:8],
                      'conditionals': text.count(' conditional(')}
      print(f'{name}: compiled in {compile_s:.1f} s; {len(counts)} fusions read '
            f'{sum(counts)} stream-shaped operands, the largest {counts[:8]}; '
            f'{report[name]["conditionals"]} conditionals', flush=True)
  finally:
    clip.KEEP_GRADIENT_PLATFORMS = default

  grads = {name: jax.block_until_ready(c(params, x)) for name, c in compiled.items()}
  flat = {n: np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(v)])
          for n, v in grads.items()}
  rel = float(np.max(np.abs(flat['kept'] - flat['plain'])) / np.max(np.abs(flat['plain'])))
  times = {name: [] for name in compiled}
  for _ in range(args.reps):
    for name, c in compiled.items():
      t0 = time.perf_counter()
      jax.block_until_ready(c(params, x))
      times[name].append(time.perf_counter() - t0)
  for name in compiled:
    report[name]['times_s'] = times[name]
    report[name]['median_s'] = statistics.median(times[name])
  speedup = report['plain']['median_s'] / report['kept']['median_s']
  print(f'\n{args.model}, {args.images} images, {args.dtype}, {jax.devices()[0].device_kind} '
        f'({platform}); gradient of the image tower, median of {args.reps} alternating calls')
  print(f'{"":<8}{"median ms":>11}{"operands":>10}{"largest":>9}{"compile s":>11}')
  for name in compiled:
    r = report[name]
    print(f'{name:<8}{1e3 * r["median_s"]:>11.1f}{r["stream_operands"]:>10}'
          f'{(r["largest"] or [0])[0]:>9}{r["compile_s"]:>11.1f}')
  print(f'plain / kept time: {speedup:.3f}; gradients max relative difference {rel:.2e}')
  result = {'meta': {'model': args.model, 'images': args.images, 'dtype': args.dtype,
                     'device_kind': jax.devices()[0].device_kind, 'platform': platform,
                     'jax': jax.__version__, 'date': time.strftime('%Y-%m-%d %H:%M:%S'),
                     'default_platforms': list(default)},
            'plain': report['plain'], 'kept': report['kept'], 'plain_over_kept': speedup,
            'grad_max_rel_diff': rel}
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'wrote {args.json_out}')
  return result


if __name__ == '__main__':
  main()
