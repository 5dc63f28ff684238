"""The cross-device gradient sum in bfloat16 or in float32: how far each is from the exact sum.

With `model.dtype='bfloat16'` every weight-gradient matmul outputs bfloat16, so on a TPU the
data-parallel all-reduce of the gradients runs in bfloat16 (the compiled program's
all-reduces are bf16). This measures what that costs, on 8 CPU devices:

  1. each device computes the gradient of its own rows of the batch with the bf16 model
     (FogNet's real towers, heads and loss; `jax.shard_map`), as a bf16 matmul leaves it;
  2. the 8 partial gradients are summed four ways: in float64 on the host (the reference),
     `psum` in float32 and in bfloat16 on the devices, and a bfloat16 ring (each hop adds
     and rounds, the order of a ring all-reduce) on the host;
  3. the table gives ||sum - reference|| / ||reference|| over all parameters, and, for scale,
     the error of merely storing the exact sum in bfloat16, and how far the whole bf16
     gradient is from the float32 model's (what bf16 compute itself changes).

Each row is one batch (seeded); the model is the seeded random initialisation.

  python benchmarks/grad_reduce_dtype.py                      # configs/synthetic.py:scratch
  python benchmarks/grad_reduce_dtype.py --batch=64 --batches=3 --seed=1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from fognet_jax import config_lib  # noqa: E402
from fognet_jax import losses  # noqa: E402
from fognet_jax import pixels  # noqa: E402
from fognet_jax import sharding  # noqa: E402
from fognet_jax import weights  # noqa: E402


def make_batch(cfg, batch: int, seed: int) -> dict:
  """Random uint8 clip pairs, identity colour chains, labels: one seeded global batch."""
  rng = np.random.default_rng(seed)
  shape = (batch, cfg.data.num_frames, cfg.data.image_size, cfg.data.image_size, 3)
  clean = rng.integers(0, 256, shape, dtype=np.uint8)
  fog = rng.uniform(0.3, 0.7, (batch, 1, 1, 1, 1))
  foggy = (clean * (1 - fog) + 200 * fog).astype(np.uint8)
  color = np.broadcast_to(pixels.identity_chain(), (batch,) + pixels.identity_chain().shape)
  return {
    'clean': clean,
    'foggy': foggy,
    'color': np.ascontiguousarray(color),
    'label': rng.integers(0, 10, (batch,)).astype(np.int32),
  }


def partial_gradients(cfg, mesh, params_f32, graphdef, rest, batch, text_tokens):
  """(devices, ...) per-parameter partial gradients: device d's rows' share of the mean loss."""
  loss_fn = losses.make_loss_fn(cfg)
  n = mesh.size

  def local(params, rest, shard):
    def loss(p):
      model = nnx.merge(graphdef, p, rest)
      clean, foggy = pixels.train_inputs(shard)
      out = model.train_outputs(clean, foggy, model.encode_text(text_tokens))
      return loss_fn(out, shard['label'])[0] / n  # this device's share of the global mean

    return jax.tree.map(lambda g: g[None], jax.grad(loss)(params))

  f = jax.jit(
    jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(), P(sharding.DATA_AXIS)), out_specs=P(sharding.DATA_AXIS)
    )
  )
  return f(params_f32, rest, sharding.put_global_batch(batch, mesh))


def device_sums(mesh, partials):
  """psum of the partials over the devices in float32 and in bfloat16."""

  def both(g):
    g = jax.tree.map(lambda x: x[0], g)
    s32 = jax.lax.psum(g, sharding.DATA_AXIS)
    s16 = jax.lax.psum(jax.tree.map(lambda x: x.astype(jnp.bfloat16), g), sharding.DATA_AXIS)
    return s32, jax.tree.map(lambda x: x.astype(jnp.float32), s16)

  f = jax.jit(jax.shard_map(both, mesh=mesh, in_specs=P(sharding.DATA_AXIS), out_specs=P()))
  return f(partials)


def ring_bf16(parts: np.ndarray) -> np.ndarray:
  s = parts[0].astype(ml_dtypes.bfloat16)
  for p in parts[1:]:
    s = (s.astype(np.float32) + p.astype(ml_dtypes.bfloat16).astype(np.float32)).astype(
      ml_dtypes.bfloat16
    )
  return s.astype(np.float64)


def rel(trees, ref) -> float:
  num = sum(float(np.sum((np.asarray(a, np.float64) - r) ** 2)) for a, r in zip(trees, ref))
  den = sum(float(np.sum(r**2)) for r in ref)
  return (num / den) ** 0.5


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', default='configs/synthetic.py:scratch')
  ap.add_argument('--batch', type=int, default=32, help='global batch (8 devices)')
  ap.add_argument('--batches', type=int, default=3, help='batches measured (rows)')
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args()

  cfg = config_lib.load_config(args.config)
  cfg.model.init_from = None  # architecture only: backbone + clip_overrides, seeded init
  mesh = sharding.make_mesh(8)
  rows = []
  for dtype in ('bfloat16', 'float32'):
    cfg.model.dtype = dtype
    model = weights.create_model(cfg.model, rngs=nnx.Rngs(args.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.device_put((params, rest), sharding.replicated(mesh))
    text_tokens = jnp.asarray(
      np.random.default_rng(args.seed).integers(1, 250, (10, 12)), jnp.int32
    )
    for i in range(args.batches):
      batch = make_batch(cfg, args.batch, args.seed * 1000 + i)
      partials = partial_gradients(cfg, mesh, params, graphdef, rest, batch, text_tokens)
      if dtype == 'float32':
        exact32 = [np.sum(np.asarray(p, np.float64), axis=0) for p in jax.tree.leaves(partials)]
        rows[i]['bf16_compute'] = rel(rows[i]['ref_list'], exact32)
        continue
      leaves = [np.asarray(p, np.float32) for p in jax.tree.leaves(partials)]
      ref = [np.sum(p.astype(np.float64), axis=0) for p in leaves]
      s32, s16 = device_sums(mesh, partials)
      rows.append(
        {
          'batch_seed': args.seed * 1000 + i,
          'ref_list': ref,
          'psum_f32': rel(jax.tree.leaves(s32), ref),
          'psum_bf16': rel(jax.tree.leaves(s16), ref),
          'ring_bf16': rel([ring_bf16(p) for p in leaves], ref),
          'store_bf16': rel([r.astype(ml_dtypes.bfloat16) for r in ref], ref),
        }
      )
  print(
    f'# {args.config} bf16, global batch {args.batch} over 8 CPU devices, '
    f'seed {args.seed}; {platform.processor() or platform.machine()}, jax {jax.__version__}'
  )
  print(
    'relative L2 error of the summed gradient against the exact (float64) sum of the '
    "same partials; bf16 compute: the bf16 gradient against the float32 model's"
  )
  print(
    f'{"batch seed":>10} {"psum f32":>10} {"psum bf16":>10} {"ring bf16":>10} '
    f'{"bf16 store":>10} {"bf16 compute":>12}'
  )
  for r in rows:
    print(
      f'{r["batch_seed"]:>10} {r["psum_f32"]:>10.2e} {r["psum_bf16"]:>10.2e} '
      f'{r["ring_bf16"]:>10.2e} {r["store_bf16"]:>10.2e} {r["bf16_compute"]:>12.2e}'
    )


if __name__ == '__main__':
  main()
