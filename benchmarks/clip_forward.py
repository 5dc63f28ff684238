"""CLIP image-encoder forward (or forward + backward) time: fognet_jax (jit) vs transformers'
PyTorch CLIPModel.

Both run the same random weights (written by ``CLIPModel.save_pretrained`` and read with
``clip_weights.load``) on the same frames, in one process, alternating. Reports the
median and minimum over ``--reps`` timed calls after ``--warmup`` untimed ones (the JAX
compile happens in the warm-up), the ratio PyTorch / JAX, and the outputs' max relative
difference as a sanity check. Uses the GPU when one is visible to both frameworks.

    python benchmarks/clip_forward.py                       # ViT-B/16, 8 frames at 224^2, fp32
    python benchmarks/clip_forward.py --dtype bfloat16 --reps 20
    python benchmarks/clip_forward.py --grad --reps 3 --warmup 1   # forward + backward

With ``--grad`` each call is a training pass of the image tower: the gradient of
``sum(features**2)`` with respect to every parameter of the vision tower (the text tower is
left out on both sides).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

CONFIG_NAMES = ['ViT-B/16', 'ViT-B/32', 'ViT-L/14', 'ViT-L/14@336', 'tiny']


def _hf_model(cfg, seed):
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.CLIPConfig(
    projection_dim=cfg.embed_dim,
    text_config=dict(
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.text_width,
      intermediate_size=cfg.text_mlp,
      num_hidden_layers=cfg.text_layers,
      num_attention_heads=cfg.text_heads,
      max_position_embeddings=cfg.context_length,
      hidden_act='quick_gelu',
    ),
    vision_config=dict(
      hidden_size=cfg.vision_width,
      intermediate_size=cfg.vision_mlp,
      num_hidden_layers=cfg.vision_layers,
      num_attention_heads=cfg.vision_heads,
      image_size=cfg.image_size,
      patch_size=cfg.patch_size,
      hidden_act='quick_gelu',
    ),
  )
  return transformers.CLIPModel(config).eval()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='ViT-B/16', choices=CONFIG_NAMES)
  parser.add_argument('--frames', type=int, default=8, help='images per forward call')
  parser.add_argument('--size', type=int, default=None, help='resolution (default: model)')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--reps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--attention',
    default='xla',
    choices=['xla', 'cudnn'],
    help="JAX attention implementation ('cudnn': GPU, bfloat16 only)",
  )
  parser.add_argument('--no-torch', action='store_true', help='time only the JAX model')
  parser.add_argument(
    '--grad',
    action='store_true',
    help='time forward + backward of the image tower instead of the forward',
  )
  parser.add_argument(
    '--threads',
    type=int,
    default=None,
    help='CPU threads for both frameworks (default: their own choice)',
  )
  args = parser.parse_args(argv)
  if args.threads:
    # Must be set before jax is imported.
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '')
      + (
        ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
        if args.threads == 1
        else ''
      )
    ).strip()

  global jax, jnp, nnx, clip  # pylint: disable=global-variable-undefined
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import jax.numpy as jnp  # pylint: disable=redefined-outer-name
  import torch
  from flax import nnx  # pylint: disable=redefined-outer-name

  from fognet_jax import clip_weights
  from fognet_jax.models import clip  # pylint: disable=redefined-outer-name

  if args.threads:
    torch.set_num_threads(args.threads)
  cfg = clip.CONFIGS[args.model]
  size = args.size or cfg.image_size
  torch_device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch_dtype = torch.bfloat16 if args.dtype == 'bfloat16' else torch.float32

  hf = _hf_model(cfg, args.seed)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    model = clip_weights.load(d, dtype=args.dtype, attention_impl=args.attention)
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, pixels):
    return nnx.merge(graphdef, state).encode_image(pixels)

  rng = np.random.default_rng(args.seed)
  pixels = rng.standard_normal((args.frames, size, size, 3)).astype(np.float32)
  x_jax = jax.device_put(jnp.asarray(pixels))
  state = jax.device_put(state)
  interpolate = size != cfg.image_size

  def jax_forward():
    return forward(state, x_jax).block_until_ready()

  vis_graphdef, vis_state = nnx.split(model.visual)

  @jax.jit
  def vision_grad(vis_state, pixels):
    def loss(s):
      return jnp.sum(nnx.merge(vis_graphdef, s)(pixels).astype(jnp.float32) ** 2)

    return jax.grad(loss)(vis_state)

  def jax_grad():
    return jax.block_until_ready(vision_grad(vis_state, x_jax))

  impl = model.visual.transformer.resblocks[0].attn.attention_impl or 'xla'
  fns = {
    f'JAX/Flax NNX ({jax.devices()[0].platform}, jit, {impl})': jax_grad
    if args.grad
    else jax_forward
  }
  if not args.no_torch:
    hf = hf.to(device=torch_device, dtype=torch_dtype)
    x_t = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch_device, torch_dtype)  # NCHW

    def torch_forward():
      with torch.inference_mode():
        out = hf.get_image_features(pixel_values=x_t, interpolate_pos_encoding=interpolate)
        out = getattr(out, 'pooler_output', out)
      if torch_device == 'cuda':
        torch.cuda.synchronize()
      return out

    def torch_grad():
      out = hf.get_image_features(pixel_values=x_t, interpolate_pos_encoding=interpolate)
      out = getattr(out, 'pooler_output', out)
      (out.float() ** 2).sum().backward()
      hf.zero_grad(set_to_none=True)
      if torch_device == 'cuda':
        torch.cuda.synchronize()

    fns[f'transformers PyTorch ({torch_device}, {hf.config._attn_implementation})'] = (
      torch_grad if args.grad else torch_forward
    )
  # Warm-up (includes the JAX compile), then alternate the implementations rep by rep so
  # both see the same machine load.
  for fn in fns.values():
    for _ in range(args.warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(args.reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  rows = list(times.items())
  max_rel = None
  if not args.no_torch:
    out_jax = np.asarray(jax_forward())
    out_t = torch_forward().float().cpu().numpy()
    max_rel = float(np.max(np.abs(out_jax - out_t)) / np.max(np.abs(out_t)))

  what = 'forward + backward' if args.grad else 'forward'
  print(
    f'\nCLIP {args.model} image encoder {what}, {args.frames} frames at {size}x{size}, '
    f'{args.dtype}, median/min of {args.reps} reps after {args.warmup} warm-up'
  )
  print(
    f'host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; '
    f'jax {jax.__version__} {jax.devices()[0].device_kind}; torch {torch.__version__} '
    f'({torch.get_num_threads()} threads)'
  )
  print(f'| {"implementation":<44} | median ms | min ms | frames/s |')
  print(f'|{"-" * 46}|-----------|--------|----------|')
  for name, times in rows:
    med = statistics.median(times)
    print(f'| {name:<44} | {med * 1e3:9.1f} | {min(times) * 1e3:6.1f} | {args.frames / med:8.1f} |')
  if len(rows) == 2:
    ratio = statistics.median(rows[1][1]) / statistics.median(rows[0][1])
    print(
      f'\nPyTorch / JAX median time ratio: {ratio:.2f}x '
      f'({"JAX faster" if ratio > 1 else "PyTorch faster"})'
    )
    print(f'max relative difference of the embeddings (JAX vs PyTorch): {max_rel:.2e}')


if __name__ == '__main__':
  main()
