"""Attention of the CLIP towers: the scaled dot-product (einsums, or cuDNN's fused kernel)
and OpenAI's multi-head self-attention with its q/k/v projections applied as one matmul."""

from __future__ import annotations

import functools

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models.clip.layers import Linear
from fognet_jax.models.clip.layers import normal

ATTENTION_IMPLS = (None, 'xla', 'cudnn')

# cuDNN's fused attention takes sequence lengths that are multiples of this; shorter ones
# (197 vision tokens of ViT-B/16, 77 text tokens) are padded and the padding masked.
CUDNN_SEQ_MULTIPLE = 64


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  causal: bool,
  impl: str | None = None,
  key_mask: jax.Array | None = None,
  scale: float | None = None,
) -> jax.Array:
  """``softmax(scale q k^T) v`` per head, ``scale = 1 / sqrt(d)`` by default, softmax in
  float32 (as ``jax.nn.dot_product_attention``).

  Args:
    q, k, v: (N, heads, L, head_dim), head-major: the batched matmuls have their batch
      dimensions leading, the layout XLA:CPU's backward pass runs fastest.
    causal: mask keys after each query (text tower).
    key_mask: optional (N, M) bool, False for keys no query may attend to.
    impl: None / 'xla' (the einsums below, any shape and platform) or 'cudnn' (cuDNN's
      fused kernel, GPU, 16-bit; the sequence is padded to a multiple of
      ``CUDNN_SEQ_MULTIPLE`` and the padded keys masked).
    scale: the logits' factor; None = ``head_dim ** -0.5``. 1.0 when the queries come
      scaled already (``MultiHeadAttention`` scales them as it projects them).

  Returns:
    (N, heads, L, head_dim) in the dtype of ``v``.
  """
  if scale is None:
    scale = q.shape[-1] ** -0.5
  if impl == 'cudnn' and key_mask is None:
    return _cudnn_attention(q, k, v, causal=causal, scale=scale)
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  logits = jnp.einsum('nhld,nhmd->nhlm', q, k, preferred_element_type=logits_dtype)
  if scale != 1.0:
    logits = logits * jnp.asarray(scale, logits_dtype)
  if causal:
    length = q.shape[2]
    keep = jnp.tril(jnp.ones((length, length), bool))
    logits = jnp.where(keep, logits, jnp.finfo(logits_dtype).min)
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits_dtype).min)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum('nhlm,nhmd->nhld', weights, v)


def _cudnn_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  causal: bool,
  implementation: str = 'cudnn',
  scale: float | None = None,
) -> jax.Array:
  """cuDNN fused attention on head-major (N, heads, L, d): pads L to a multiple of
  ``CUDNN_SEQ_MULTIPLE``, masks the padded keys, drops the padded queries.

  ``implementation`` is passed to ``jax.nn.dot_product_attention`` ('xla' runs the same
  padding and masking on any platform, for tests).
  """
  length = q.shape[2]
  padded = -(-length // CUDNN_SEQ_MULTIPLE) * CUDNN_SEQ_MULTIPLE
  # (N, heads, L, d) -> (N, L_padded, heads, d), the layout dot_product_attention takes
  to_bthd = lambda t: jnp.pad(
    t.transpose(0, 2, 1, 3), ((0, 0), (0, padded - length), (0, 0), (0, 0))
  )
  n = q.shape[0]
  lengths = jnp.full((n,), length, jnp.int32) if padded != length else None
  out = jax.nn.dot_product_attention(
    to_bthd(q),
    to_bthd(k),
    to_bthd(v),
    is_causal=causal,
    query_seq_lengths=lengths,
    key_value_seq_lengths=lengths,
    scale=scale,
    implementation=implementation,
  )
  return out[:, :length].transpose(0, 2, 1, 3)


class MultiHeadAttention(nnx.Module):
  """Self-attention with separate q/k/v projections (OpenAI's fused in_proj, split).

  The three projections are applied as one matmul (their kernels concatenated at the
  call), which keeps OpenAI's and Hugging Face's parameter layout and runs one large
  GEMM instead of three.
  """

  def __init__(
    self,
    width: int,
    heads: int,
    *,
    dtype,
    rngs: nnx.Rngs,
    in_std: float,
    out_std: float,
    attention_impl: str | None = None,
  ):
    self.heads = heads
    self.query_scale = (width // heads) ** -0.5
    self.attention_impl = attention_impl
    self.dtype = dtype
    linear = functools.partial(
      Linear, width, width, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.q_proj = linear(kernel_init=normal(in_std))
    self.k_proj = linear(kernel_init=normal(in_std))
    self.v_proj = linear(kernel_init=normal(in_std))
    self.out_proj = linear(kernel_init=normal(out_std))

  def _project(self, x: jax.Array, projs) -> jax.Array:
    """(N, L, width) -> (len(projs), N, heads, L, head_dim): the projections as one matmul.

    The queries come multiplied by the attention scale ``head_dim ** -0.5``, in the copy
    that makes them head-major, so the logits need no scaling: a multiply of (L, head_dim)
    per head instead of (L, L). For a head width of a power of 4 (64 in every CLIP preset)
    the scale is a power of 2, and values and gradients are bit-identical to scaling the
    logits.
    """
    n, length, width = x.shape
    kernel = jnp.concatenate([p.kernel[...] for p in projs], axis=1).astype(self.dtype)
    bias = jnp.concatenate([p.bias[...] for p in projs]).astype(self.dtype)
    # (N*L, width) @ (width, P*width)
    y = jnp.dot(x.reshape(n * length, width).astype(self.dtype), kernel) + bias
    y = einops.rearrange(y, '(n l) (p h d) -> p n h l d', n=n, p=len(projs), h=self.heads)
    scales = [self.query_scale if p is self.q_proj else 1.0 for p in projs]
    return y * jnp.asarray(scales, y.dtype)[:, None, None, None, None]

  def __call__(self, x: jax.Array, *, causal: bool) -> jax.Array:
    q, k, v = self._project(x, (self.q_proj, self.k_proj, self.v_proj))
    out = attention(q, k, v, causal=causal, impl=self.attention_impl, scale=1.0)
    out = einops.rearrange(out, 'n h l d -> n l (h d)')
    return self.out_proj(out)

  def attend_row(self, x: jax.Array, rows: jax.Array, *, causal: bool) -> jax.Array:
    """The attention output at one position per sequence: ``__call__(x)[n, rows[n]]``.

    x: (N, L, width); rows: (N,) int. Keys and values are projected for every token, the
    query for the selected token only. Returns (N, width).
    """
    x_q = jnp.take_along_axis(x, rows[:, None, None], axis=1)  # (N, 1, width)
    (q,) = self._project(x_q, (self.q_proj,))  # (N, heads, 1, head_dim)
    k, v = self._project(x, (self.k_proj, self.v_proj))  # (N, heads, L, head_dim) each
    key_mask = None
    if causal:  # the query at rows[n] sees keys 0..rows[n]
      key_mask = jnp.arange(x.shape[1])[None, :] <= rows[:, None]  # (N, L)
    out = attention(q, k, v, causal=False, key_mask=key_mask, scale=1.0)  # (N, heads, 1, d)
    return self.out_proj(einops.rearrange(out, 'n h 1 d -> n (h d)'))
