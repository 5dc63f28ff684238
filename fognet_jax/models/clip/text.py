"""CLIP's text transformer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models.clip.config import CLIPConfig
from fognet_jax.models.clip.layers import layer_norm
from fognet_jax.models.clip.layers import normal
from fognet_jax.models.clip.transformer import Transformer


class TextTransformer(nnx.Module):
  """CLIP text tower: (N, L<=context_length) int32 token ids -> (N, embed_dim).

  Causal attention; the output is read at each row's largest token id (end-of-text).
  """

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
    width = config.text_width
    self.config = config
    self.dtype = dtype
    self.residual_dtype = residual_dtype
    self.token_embedding = nnx.Embed(
      config.vocab_size,
      width,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      embedding_init=normal(0.02),
      rngs=rngs,
    )
    self.positional_embedding = nnx.Param(
      0.01 * jax.random.normal(rngs.params(), (config.context_length, width))
    )
    self.transformer = Transformer(
      width,
      config.text_layers,
      config.text_heads,
      config.text_mlp,
      config.activation,
      dtype=dtype,
      remat=remat,
      rngs=rngs,
      attention_impl=attention_impl,
    )
    self.ln_final = layer_norm(width, rngs)
    self.text_projection = nnx.Param(
      width**-0.5 * jax.random.normal(rngs.params(), (width, config.embed_dim))
    )

  def tokens(self, token_ids: jax.Array) -> jax.Array:
    """Final-layer token features after ``ln_final``: (N, L) -> (N, L, width)."""
    return self.ln_final(self.transformer(self._embed(token_ids), causal=True))

  def _embed(self, token_ids: jax.Array) -> jax.Array:
    """Token plus position embeddings: (N, L) -> (N, L, width)."""
    if token_ids.ndim != 2 or token_ids.shape[1] > self.config.context_length:
      raise ValueError(
        f'encode_text expects (N, L<={self.config.context_length}) token ids, '
        f'got shape {token_ids.shape}'
      )
    length = token_ids.shape[1]
    x = self.token_embedding(token_ids)  # (N, L, width)
    x = x + self.positional_embedding[...][:length].astype(jnp.float32)[None]
    return x.astype(self.residual_dtype)

  def __call__(self, token_ids: jax.Array) -> jax.Array:
    eot = jnp.argmax(token_ids, axis=-1)  # (N,) end-of-text = largest id
    # (N, width): the last layer at each row's end-of-text token (computed for it alone)
    x = self.ln_final(self.transformer(self._embed(token_ids), causal=True, pool_at=eot))
    return jnp.dot(
      x.astype(self.dtype),
      self.text_projection[...].astype(self.dtype),
      preferred_element_type=jnp.float32,
    ).astype(jnp.float32)
