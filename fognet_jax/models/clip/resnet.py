"""OpenAI's ModifiedResNet image tower (RN50, RN101, RN50x4, ...)."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models.clip.config import BATCH_NORM_EPS
from fognet_jax.models.clip.config import CLIPConfig
from fognet_jax.models.clip.layers import normal
from fognet_jax.models.clip.multihead import attention
from fognet_jax.models.clip.vit import interpolate_pos_embed


class FrozenBatchNorm(nnx.Module):
  """BatchNorm with fixed statistics: ``(x - mean) / sqrt(var + eps) * scale + bias``.

  ``scale`` and ``bias`` are trained; the running ``mean`` / ``var`` (``nnx.BatchStat``,
  read from a checkpoint or 0 / 1 from scratch) are never updated. Fine-tuning with frozen
  statistics keeps a step independent of the per-device batch and of the mesh.
  """

  def __init__(self, channels: int, *, scale_init: float = 1.0):
    self.scale = nnx.Param(jnp.full((channels,), scale_init, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    mul = self.scale[...] * jax.lax.rsqrt(self.var[...] + BATCH_NORM_EPS)
    add = self.bias[...] - self.mean[...] * mul
    return x * mul.astype(x.dtype) + add.astype(x.dtype)


def _conv(cin: int, cout: int, k: int, *, dtype, rngs: nnx.Rngs, stride: int = 1) -> nnx.Conv:
  # He-normal: with frozen (identity) statistics from scratch, this keeps the activation
  # scale through the norm-free stem and blocks (PyTorch's default shrinks it ~3x a layer).
  return nnx.Conv(
    cin,
    cout,
    kernel_size=(k, k),
    strides=(stride, stride),
    padding=((k // 2, k // 2), (k // 2, k // 2)),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
    rngs=rngs,
  )


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
  """PyTorch ``AvgPool2d(k)`` on NHWC (stride k, no padding, floor)."""
  if k == 1:
    return x
  return nnx.avg_pool(x, window_shape=(k, k), strides=(k, k), padding='VALID')


class Bottleneck(nnx.Module):
  """ResNet bottleneck (expansion 4) with anti-aliased striding: the stride is an average
  pool after the 3x3 convolution (and before the 1x1 of the shortcut)."""

  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
    out = planes * self.expansion
    self.stride = stride
    self.conv1 = _conv(inplanes, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = FrozenBatchNorm(planes)
    self.conv2 = _conv(planes, planes, 3, dtype=dtype, rngs=rngs)
    self.bn2 = FrozenBatchNorm(planes)
    self.conv3 = _conv(planes, out, 1, dtype=dtype, rngs=rngs)
    self.bn3 = FrozenBatchNorm(out, scale_init=0.0)  # OpenAI: each block starts as identity
    if stride > 1 or inplanes != out:
      self.downsample_conv = _conv(inplanes, out, 1, dtype=dtype, rngs=rngs)
      self.downsample_bn = FrozenBatchNorm(out)
    else:
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(_avg_pool(out, self.stride)))
    identity = x
    if self.downsample_conv is not None:
      identity = self.downsample_bn(self.downsample_conv(_avg_pool(x, self.stride)))
    return jax.nn.relu(out + identity)


class AttentionPool2d(nnx.Module):
  """CLIP's attention pooling: the mean feature (plus position embeddings) attends over
  all positions; output ``c_proj`` to ``embed_dim``."""

  def __init__(self, grid: int, width: int, heads: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
    self.grid = grid
    self.heads = heads
    self.positional_embedding = nnx.Param(
      width**-0.5 * jax.random.normal(rngs.params(), (grid * grid + 1, width))
    )
    std = width**-0.5

    def linear(cout):
      return nnx.Linear(
        width,
        cout,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=normal(std),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
      )

    self.q_proj, self.k_proj, self.v_proj = linear(width), linear(width), linear(width)
    self.c_proj = linear(out_dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, gh, gw, c = x.shape
    x = x.reshape(n, gh * gw, c).astype(jnp.float32)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    x = (
      x
      + interpolate_pos_embed(self.positional_embedding[...], (self.grid, self.grid), (gh, gw))[
        None
      ]
    )
    # Only the mean token queries; the same attention as MultiHeadAttention's.
    split = lambda t: einops.rearrange(t, 'n l (h d) -> n h l d', h=self.heads)
    q = split(self.q_proj(x[:, :1]))
    k, v = split(self.k_proj(x)), split(self.v_proj(x))
    out = attention(q, k, v, causal=False)  # (n, heads, 1, d)
    return self.c_proj(einops.rearrange(out, 'n h 1 d -> n (h d)')).astype(jnp.float32)


class ModifiedResNet(nnx.Module):
  """CLIP's ResNet image tower: (N, H, W, 3) CLIP-normalised pixels -> (N, embed_dim).

  A 3-convolution stem with an average pool, four stages of bottlenecks with anti-aliased
  striding, and an attention pool. Batch norms keep fixed statistics (`FrozenBatchNorm`).
  """

  def __init__(self, config: CLIPConfig, *, dtype, remat: bool, rngs: nnx.Rngs):
    width = config.vision_width
    self.config = config
    self.dtype = dtype
    self.remat = remat
    self.conv1 = _conv(3, width // 2, 3, stride=2, dtype=dtype, rngs=rngs)
    self.bn1 = FrozenBatchNorm(width // 2)
    self.conv2 = _conv(width // 2, width // 2, 3, dtype=dtype, rngs=rngs)
    self.bn2 = FrozenBatchNorm(width // 2)
    self.conv3 = _conv(width // 2, width, 3, dtype=dtype, rngs=rngs)
    self.bn3 = FrozenBatchNorm(width)
    inplanes = width
    stages = []
    for i, blocks in enumerate(config.vision_layers):
      planes = width * 2**i
      stage = []
      for b in range(blocks):
        stage.append(
          Bottleneck(inplanes, planes, 2 if (i > 0 and b == 0) else 1, dtype=dtype, rngs=rngs)
        )
        inplanes = planes * Bottleneck.expansion
      stages.append(nnx.List(stage))
    self.layers = nnx.List(stages)
    self.attnpool = AttentionPool2d(
      config.grid_size, width * 32, config.vision_heads, config.embed_dim, dtype=dtype, rngs=rngs
    )

  def features(self, pixels: jax.Array) -> jax.Array:
    """Final feature map before the attention pool: (N, H/32, W/32, 32 * vision_width)."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f'encode_image expects (N, H, W, 3) pixels, got shape {pixels.shape}')
    if pixels.shape[1] < 32 or pixels.shape[2] < 32:
      raise ValueError(
        f'Image {pixels.shape[1]}x{pixels.shape[2]} is smaller than the '
        "ResNet tower's downsampling of 32"
      )
    x = pixels.astype(self.dtype)
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
      x = jax.nn.relu(bn(conv(x)))
    x = _avg_pool(x, 2)
    apply = nnx.remat(lambda block, x: block(x)) if self.remat else (lambda block, x: block(x))
    for stage in self.layers:
      for block in stage:
        x = apply(block, x)
    return x

  def __call__(self, pixels: jax.Array) -> jax.Array:
    return self.attnpool(self.features(pixels))
