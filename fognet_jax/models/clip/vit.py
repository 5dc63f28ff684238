"""CLIP's vision transformer, and the bicubic resize of its position embeddings to other
image sizes (the same operation as torch's)."""

from __future__ import annotations

import functools

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fognet_jax.models.clip.config import CLIPConfig
from fognet_jax.models.clip.layers import layer_norm
from fognet_jax.models.clip.transformer import Transformer


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights for offsets -1, 0, 1, 2 at fractional position t."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) matrix of torch's bicubic resize (align_corners=False, a=-0.75).

  Source index ``(i + 0.5) * in / out - 0.5``, border samples clamped, no antialiasing:
  the same operation as ``torch.nn.functional.interpolate(mode='bicubic')`` used by
  Hugging Face's ``interpolate_pos_encoding``.
  """
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  floor = np.floor(src)
  weights = _cubic_weights(src - floor)  # (out, 4)
  matrix = np.zeros((out_size, in_size), np.float64)
  for k in range(4):
    idx = np.clip(floor.astype(np.int64) - 1 + k, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), idx), weights[:, k])
  return matrix.astype(np.float32)


def interpolate_pos_embed(
  pos_embed: jax.Array, grid_in: tuple[int, int], grid_out: tuple[int, int]
) -> jax.Array:
  """Resizes vision position embeddings ``(1 + gh*gw, C)`` to a new patch grid.

  The class-token row is kept; the patch rows are resized with bicubic interpolation
  (separable, the same as torch's ``interpolate(mode='bicubic', align_corners=False)``).
  """
  if tuple(grid_in) == tuple(grid_out):
    return pos_embed
  cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
  # (gh*gw, C) -> (gh, gw, C)
  patch_pos = einops.rearrange(patch_pos, '(h w) c -> h w c', h=grid_in[0], w=grid_in[1])
  mh = jnp.asarray(bicubic_matrix(grid_in[0], grid_out[0]))
  mw = jnp.asarray(bicubic_matrix(grid_in[1], grid_out[1]))
  patch_pos = jnp.einsum(
    'Hh,hwc,Ww->HWc', mh, patch_pos.astype(jnp.float32), mw, precision=jax.lax.Precision.HIGHEST
  )
  patch_pos = einops.rearrange(patch_pos, 'h w c -> (h w) c')
  return jnp.concatenate([cls_pos, patch_pos.astype(pos_embed.dtype)], axis=0)


class VisionTransformer(nnx.Module):
  """CLIP image tower: (N, H, W, 3) CLIP-normalised pixels -> (N, embed_dim)."""

  def __init__(
    self,
    config: CLIPConfig,
    *,
    dtype,
    remat: bool,
    rngs: nnx.Rngs,
    attention_impl: str | None = None,
    residual_dtype=jnp.float32,
  ):
    width, p = config.vision_width, config.patch_size
    self.config = config
    self.dtype = dtype
    self.residual_dtype = residual_dtype
    scale = width**-0.5
    self.conv1 = nnx.Conv(
      3,
      width,
      kernel_size=(p, p),
      strides=(p, p),
      padding='VALID',
      use_bias=False,
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (width,)))
    self.positional_embedding = nnx.Param(
      scale * jax.random.normal(rngs.params(), (config.grid_size**2 + 1, width))
    )
    self.ln_pre = layer_norm(width, rngs)
    self.transformer = Transformer(
      width,
      config.vision_layers,
      config.vision_heads,
      config.vision_mlp,
      config.activation,
      dtype=dtype,
      remat=remat,
      rngs=rngs,
      attention_impl=attention_impl,
    )
    self.ln_post = layer_norm(width, rngs)
    self.proj = nnx.Param(scale * jax.random.normal(rngs.params(), (width, config.embed_dim)))

  def tokens(self, pixels: jax.Array) -> jax.Array:
    """Final-layer tokens before ``ln_post``: (N, H, W, 3) -> (N, 1 + gh*gw, width) float32."""
    return self.transformer(self._embed(pixels), causal=False).astype(jnp.float32)

  def _embed(self, pixels: jax.Array) -> jax.Array:
    """Input tokens of the transformer: (N, H, W, 3) -> (N, 1 + gh*gw, width)."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f'encode_image expects (N, H, W, 3) pixels, got shape {pixels.shape}')
    p = self.config.patch_size
    if pixels.shape[1] < p or pixels.shape[2] < p:
      raise ValueError(
        f'Image {pixels.shape[1]}x{pixels.shape[2]} is smaller than the patch size {p}'
      )
    x = self.conv1(pixels.astype(self.dtype))  # (N, gh, gw, width)
    n, gh, gw, _ = x.shape
    x = einops.rearrange(x, 'n h w c -> n (h w) c').astype(jnp.float32)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(jnp.float32), (n, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)  # (N, 1 + gh*gw, width)
    g = self.config.grid_size
    x = x + interpolate_pos_embed(self.positional_embedding[...], (g, g), (gh, gw))[None]
    return self.ln_pre(x).astype(self.residual_dtype)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    x = self._embed(pixels)
    # (N, width): the class token of the last layer (computed for that token alone)
    cls_token = jnp.zeros((x.shape[0],), jnp.int32)
    x = self.ln_post(self.transformer(x, causal=False, pool_at=cls_token))
    return jnp.dot(
      x.astype(self.dtype), self.proj[...].astype(self.dtype), preferred_element_type=jnp.float32
    ).astype(jnp.float32)
