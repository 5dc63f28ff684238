"""Small layers shared by the CLIP towers: LayerNorm as torch's, a normal initialiser, and a
dense layer that runs as one 2-D matmul."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models.clip.config import LAYER_NORM_EPS


def layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with float32 statistics and output whatever the compute dtype, and the
  two-pass variance of torch."""
  return nnx.LayerNorm(
    width,
    epsilon=LAYER_NORM_EPS,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    use_fast_variance=False,
    rngs=rngs,
  )


def normal(std: float):
  return nnx.initializers.normal(stddev=std)


class Linear(nnx.Linear):
  """``nnx.Linear`` that applies its kernel to ``(..., in)`` as one 2-D matmul.

  The leading dimensions are merged into the rows first: ``(N, L, in) -> (N*L, in)``.
  Numerically the same product; the weight gradient then contracts one dimension, not two,
  which XLA:CPU runs about 1.5x faster (docs/perf_notes.md, "CPU: ours against PyTorch eager").
  """

  def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    if inputs.ndim <= 2:
      return super().__call__(inputs, out_sharding=out_sharding)
    lead = inputs.shape[:-1]
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return y.reshape(*lead, y.shape[-1])
