"""OpenAI CLIP: the image tower (a vision transformer or a ModifiedResNet), the text tower
and the learned logit scale."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models.clip.config import CLIPConfig
from fognet_jax.models.clip.config import canonical_dtype
from fognet_jax.models.clip.config import get_config
from fognet_jax.models.clip.multihead import ATTENTION_IMPLS
from fognet_jax.models.clip.resnet import ModifiedResNet
from fognet_jax.models.clip.text import TextTransformer
from fognet_jax.models.clip.vit import VisionTransformer


class CLIP(nnx.Module):
  """OpenAI CLIP: ``.visual`` image tower, ``.text`` text tower, ``.logit_scale``.

  Args:
    config: the model's :class:`CLIPConfig`.
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); params stay float32.
    remat: rematerialise each residual block in the backward pass (saves memory).
    attention_impl: None or 'xla' (the towers' own einsum attention, :func:`attention`:
      any shape and platform), or 'cudnn' (cuDNN's fused kernel through
      ``jax.nn.dot_product_attention``: GPU, 16-bit dtype; sequences padded to a multiple
      of ``CUDNN_SEQ_MULTIPLE`` and masked; opt-in until measured on a GPU).
    residual_dtype: dtype of the transformers' residual stream between the blocks: None
      (float32) or ``dtype`` itself (16-bit activations throughout; opt-in until measured
      on a GPU). The ResNet image tower has no residual stream of this kind.
    rngs: random streams for the initialisation.
  """

  def __init__(
    self,
    config: CLIPConfig,
    *,
    dtype=jnp.float32,
    remat: bool = False,
    attention_impl: str | None = None,
    residual_dtype=None,
    rngs: nnx.Rngs,
  ):
    dtype = canonical_dtype(dtype)
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}')
    residual_dtype = (
      jnp.dtype(jnp.float32) if residual_dtype is None else canonical_dtype(residual_dtype)
    )
    if residual_dtype not in (jnp.dtype(jnp.float32), dtype):
      raise ValueError(
        f'residual_dtype must be None, float32 or the compute dtype {dtype}, got {residual_dtype}'
      )
    self.config = config
    self.dtype = dtype
    self.remat = remat
    if config.is_resnet:
      self.visual = ModifiedResNet(config, dtype=dtype, remat=remat, rngs=rngs)
    else:
      self.visual = VisionTransformer(
        config,
        dtype=dtype,
        remat=remat,
        rngs=rngs,
        attention_impl=attention_impl,
        residual_dtype=residual_dtype,
      )
    self.text = TextTransformer(
      config,
      dtype=dtype,
      remat=remat,
      rngs=rngs,
      attention_impl=attention_impl,
      residual_dtype=residual_dtype,
    )
    self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

  def encode_image(self, pixels: jax.Array) -> jax.Array:
    """(N, H, W, 3) CLIP-normalised float pixels -> (N, embed_dim) float32, unnormalised."""
    return self.visual(pixels)

  def encode_text(self, token_ids: jax.Array) -> jax.Array:
    """(N, context_length) int32 token ids -> (N, embed_dim) float32, unnormalised."""
    return self.text(token_ids)

  def __call__(self, pixels: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img))``."""
    img = self.encode_image(pixels)
    txt = self.encode_text(token_ids)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    logits_per_image = jnp.exp(self.logit_scale[...]) * img @ txt.T
    return logits_per_image, logits_per_image.T


def create(
  name_or_config: str | CLIPConfig = 'ViT-B/16',
  *,
  dtype=jnp.float32,
  remat: bool = False,
  seed: int = 0,
  attention_impl: str | None = None,
  residual_dtype=None,
  **overrides: Any,
) -> CLIP:
  """Builds a randomly initialised CLIP from a config name (or config) plus overrides.

  Example: ``clip.create('tiny', image_size=64, seed=1)``.
  """
  config = get_config(name_or_config, **overrides)
  return CLIP(
    config,
    dtype=dtype,
    remat=remat,
    attention_impl=attention_impl,
    residual_dtype=residual_dtype,
    rngs=nnx.Rngs(seed),
  )


def count_params(tree: Any) -> int:
  """Number of scalar parameters: of a module's ``nnx.Param`` variables (shared ones counted
  once), or of every leaf of a parameter pytree (arrays or shape structs)."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, nnx.Param)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
