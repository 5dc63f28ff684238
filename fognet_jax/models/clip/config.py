"""CLIP hyper-parameters: :class:`CLIPConfig`, the named presets and the constants shared
by the towers (image normalisation, norm epsilons, activations, compute dtypes)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# OpenAI's image normalisation (RGB, for pixel values scaled to [0, 1]).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

LAYER_NORM_EPS = 1e-5
BATCH_NORM_EPS = 1e-5  # PyTorch BatchNorm2d's, as in OpenAI's ResNet towers


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {'quick_gelu': quick_gelu, 'gelu': functools.partial(jax.nn.gelu, approximate=False)}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Hyper-parameters of a CLIP model (names follow OpenAI's ``build_model``).

  Attributes:
    embed_dim: width of the joint image/text embedding space.
    image_size: input resolution the position embeddings are laid out for.
    patch_size: side of the square patches of the vision transformer.
    vision_width / vision_layers / vision_heads: vision transformer size. A tuple of four
      block counts as ``vision_layers`` makes the image tower OpenAI's ``ModifiedResNet``
      (RN50 and friends) instead: ``vision_width`` is then the stem width, the attention
      pool has ``vision_heads`` heads and ``patch_size`` is unused (the tower downsamples
      by 32).
    context_length: number of text tokens (77 for all OpenAI models).
    vocab_size: text vocabulary size (49408 for CLIP's BPE).
    text_width / text_layers / text_heads: text transformer size.
    vision_mlp_dim / text_mlp_dim: MLP hidden width; ``None`` means 4 * width.
    activation: 'quick_gelu' (OpenAI) or 'gelu' (exact erf GELU).
  """

  embed_dim: int = 512
  image_size: int = 224
  patch_size: int = 16
  vision_width: int = 768
  vision_layers: int | tuple[int, ...] = 12
  vision_heads: int = 12
  context_length: int = 77
  vocab_size: int = 49408
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  vision_mlp_dim: int | None = None
  text_mlp_dim: int | None = None
  activation: str = 'quick_gelu'

  def __post_init__(self):
    def positive_int(value):
      return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0

    for name in (
      'embed_dim',
      'image_size',
      'patch_size',
      'vision_width',
      'vision_heads',
      'context_length',
      'vocab_size',
      'text_width',
      'text_layers',
      'text_heads',
    ):
      value = getattr(self, name)
      if not positive_int(value):
        raise ValueError(f'CLIPConfig.{name} must be a positive integer, got {value!r}')
    layers = self.vision_layers
    if isinstance(layers, list):
      object.__setattr__(self, 'vision_layers', tuple(layers))
      layers = self.vision_layers
    if isinstance(layers, tuple):
      if len(layers) != 4 or not all(positive_int(n) for n in layers):
        raise ValueError(
          'CLIPConfig.vision_layers must be a positive integer (ViT) or four '
          f'positive block counts (ResNet), got {layers!r}'
        )
      if self.image_size % 32:
        raise ValueError(
          f'CLIPConfig.image_size={self.image_size} must be a multiple of 32 '
          'for a ResNet image tower'
        )
      if (self.vision_width * 32) % self.vision_heads:
        raise ValueError(
          f'CLIPConfig.vision_heads={self.vision_heads} must divide the ResNet '
          f'feature width 32 * vision_width = {self.vision_width * 32}'
        )
    elif not positive_int(layers):
      raise ValueError(f'CLIPConfig.vision_layers must be a positive integer, got {layers!r}')
    if not self.is_resnet and self.vision_width % self.vision_heads:
      raise ValueError(
        f'CLIPConfig.vision_width={self.vision_width} is not divisible by '
        f'vision_heads={self.vision_heads}'
      )
    if self.text_width % self.text_heads:
      raise ValueError(
        f'CLIPConfig.text_width={self.text_width} is not divisible by text_heads={self.text_heads}'
      )
    if not self.is_resnet and self.image_size % self.patch_size:
      raise ValueError(
        f'CLIPConfig.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}'
      )
    if self.activation not in ACTIVATIONS:
      raise ValueError(
        f'CLIPConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}'
      )

  @property
  def is_resnet(self) -> bool:
    """Whether the image tower is OpenAI's ModifiedResNet (``vision_layers`` is a tuple)."""
    return isinstance(self.vision_layers, tuple)

  @property
  def grid_size(self) -> int:
    """Patches (ViT) or final feature-map cells (ResNet) per side at ``image_size``."""
    return self.image_size // (32 if self.is_resnet else self.patch_size)

  @property
  def vision_mlp(self) -> int:
    return self.vision_mlp_dim or 4 * self.vision_width

  @property
  def text_mlp(self) -> int:
    return self.text_mlp_dim or 4 * self.text_width


CONFIGS: dict[str, CLIPConfig] = {
  'ViT-B/32': CLIPConfig(
    embed_dim=512,
    image_size=224,
    patch_size=32,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
  ),
  'ViT-B/16': CLIPConfig(
    embed_dim=512,
    image_size=224,
    patch_size=16,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
  ),
  'ViT-L/14': CLIPConfig(
    embed_dim=768,
    image_size=224,
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    text_width=768,
    text_layers=12,
    text_heads=12,
  ),
  'ViT-L/14@336': CLIPConfig(
    embed_dim=768,
    image_size=336,
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    text_width=768,
    text_layers=12,
    text_heads=12,
  ),
  'RN50': CLIPConfig(
    embed_dim=1024,
    image_size=224,
    vision_width=64,
    vision_layers=(3, 4, 6, 3),
    vision_heads=32,
    text_width=512,
    text_layers=12,
    text_heads=8,
  ),
  'RN101': CLIPConfig(
    embed_dim=512,
    image_size=224,
    vision_width=64,
    vision_layers=(3, 4, 23, 3),
    vision_heads=32,
    text_width=512,
    text_layers=12,
    text_heads=8,
  ),
  'RN50x4': CLIPConfig(
    embed_dim=640,
    image_size=288,
    vision_width=80,
    vision_layers=(4, 6, 10, 6),
    vision_heads=40,
    text_width=640,
    text_layers=12,
    text_heads=10,
  ),
  # Small model for tests and from-scratch experiments (full BPE vocabulary and context).
  'tiny': CLIPConfig(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=4,
    text_width=64,
    text_layers=2,
    text_heads=4,
  ),
  # Its ResNet counterpart (stem width 8: feature width 256 before the attention pool).
  'tiny-rn': CLIPConfig(
    embed_dim=32,
    image_size=64,
    vision_width=8,
    vision_layers=(1, 1, 1, 1),
    vision_heads=4,
    text_width=64,
    text_layers=2,
    text_heads=4,
  ),
}


def get_config(name_or_config: str | CLIPConfig, **overrides: Any) -> CLIPConfig:
  """Returns the named config (or the given one) with ``overrides`` applied.

  Raises:
    ValueError: unknown config name or unknown override key (named in the message).
  """
  if isinstance(name_or_config, CLIPConfig):
    config = name_or_config
  elif isinstance(name_or_config, str):
    if name_or_config not in CONFIGS:
      raise ValueError(f'Unknown CLIP config {name_or_config!r}; known: {sorted(CONFIGS)}')
    config = CONFIGS[name_or_config]
  else:
    raise TypeError(f'Expected a config name or CLIPConfig, got {type(name_or_config)}')
  fields = {f.name for f in dataclasses.fields(CLIPConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'Unknown CLIPConfig key(s) {unknown}; known keys: {sorted(fields)}')
  return dataclasses.replace(config, **overrides) if overrides else config


def canonical_dtype(dtype: Any) -> jnp.dtype:
  """Accepts jnp dtypes or the strings 'float32' / 'bfloat16' / 'float16'."""
  if isinstance(dtype, str):
    if dtype not in ('float32', 'bfloat16', 'float16'):
      raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
  return jnp.dtype(dtype)
