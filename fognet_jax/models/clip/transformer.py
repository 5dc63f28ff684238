"""OpenAI's pre-LayerNorm transformer: MLP, residual attention block, and the stack of them,
on (N, L, width) token sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models.clip.config import ACTIVATIONS
from fognet_jax.models.clip.layers import Linear
from fognet_jax.models.clip.layers import layer_norm
from fognet_jax.models.clip.layers import normal
from fognet_jax.models.clip.multihead import MultiHeadAttention


class MLP(nnx.Module):
  """``c_fc`` -> activation -> ``c_proj``."""

  def __init__(
    self,
    width: int,
    hidden: int,
    activation: str,
    *,
    dtype,
    rngs: nnx.Rngs,
    fc_std: float,
    proj_std: float,
  ):
    self.activation = activation
    self.c_fc = Linear(
      width, hidden, dtype=dtype, param_dtype=jnp.float32, kernel_init=normal(fc_std), rngs=rngs
    )
    self.c_proj = Linear(
      hidden, width, dtype=dtype, param_dtype=jnp.float32, kernel_init=normal(proj_std), rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
  """Pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

  def __init__(
    self,
    width: int,
    heads: int,
    mlp_dim: int,
    activation: str,
    *,
    layers: int,
    dtype,
    rngs: nnx.Rngs,
    attention_impl: str | None = None,
  ):
    # OpenAI's initialisation (CLIP.initialize_parameters).
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    self.ln_1 = layer_norm(width, rngs)
    self.attn = MultiHeadAttention(
      width,
      heads,
      dtype=dtype,
      rngs=rngs,
      in_std=attn_std,
      out_std=proj_std,
      attention_impl=attention_impl,
    )
    self.ln_2 = layer_norm(width, rngs)
    self.mlp = MLP(
      width, mlp_dim, activation, dtype=dtype, rngs=rngs, fc_std=fc_std, proj_std=proj_std
    )

  def __call__(
    self, x: jax.Array, *, causal: bool = False, pool_at: jax.Array | None = None
  ) -> jax.Array:
    """(N, L, width) -> (N, L, width).

    With ``pool_at`` ((N,) int) only the output at position ``pool_at[n]`` of each sequence,
    (N, width): the attention query, output projection and MLP run for that token alone
    (keys and values still come from every token). Sub-layer outputs are added in the
    residual stream's dtype.
    """
    h = self.ln_1(x)
    if pool_at is None:
      x = x + self.attn(h, causal=causal).astype(x.dtype)
    else:
      x = jnp.take_along_axis(x, pool_at[:, None, None], axis=1)[:, 0]  # (N, width)
      x = x + self.attn.attend_row(h, pool_at, causal=causal).astype(x.dtype)
    return x + self.mlp(self.ln_2(x)).astype(x.dtype)


class Transformer(nnx.Module):
  """A stack of residual attention blocks, optionally rematerialised block by block."""

  def __init__(
    self,
    width: int,
    layers: int,
    heads: int,
    mlp_dim: int,
    activation: str,
    *,
    dtype,
    remat: bool,
    rngs: nnx.Rngs,
    attention_impl: str | None = None,
  ):
    self.remat = remat
    self.resblocks = nnx.List(
      [
        ResidualAttentionBlock(
          width,
          heads,
          mlp_dim,
          activation,
          layers=layers,
          dtype=dtype,
          rngs=rngs,
          attention_impl=attention_impl,
        )
        for _ in range(layers)
      ]
    )

  def __call__(
    self, x: jax.Array, *, causal: bool = False, pool_at: jax.Array | None = None
  ) -> jax.Array:
    """(N, L, width) -> (N, L, width); with ``pool_at`` ((N,) int) only the output at
    ``pool_at[n]`` of each sequence, (N, width).

    With ``pool_at`` the last block computes its query, output projection and MLP for those
    positions alone (exact: nothing else of the last layer is read).
    """

    def block_fn(block, x, pool_at=None):
      return block(x, causal=causal, pool_at=pool_at)

    if self.remat:
      block_fn = nnx.remat(block_fn)
    *blocks, last = self.resblocks
    for block in blocks:
      x = block_fn(block, x)
    return block_fn(last, x, pool_at)
