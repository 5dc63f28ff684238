"""OpenAI CLIP (vision + text transformers) in Flax NNX.

The architecture follows OpenAI's reference exactly, so that the published weights
load without change:

* vision: patch convolution without bias, class token, learned position embeddings,
  ``ln_pre``, pre-LayerNorm residual blocks, ``ln_post`` on the class token, bias-free
  projection ``proj``;
* text: token + learned position embeddings, causal pre-LayerNorm residual blocks,
  ``ln_final``, pooling at the end-of-text token (the largest token id of each row,
  ``argmax``), bias-free ``text_projection``;
* QuickGELU (``x * sigmoid(1.702 x)``) in the MLPs, LayerNorm epsilon 1e-5, a learned
  ``logit_scale`` (log scale, initialised to ``log(1 / 0.07)``).

Mixed precision: parameters are always float32. With ``dtype=jnp.bfloat16`` the matmuls
and the convolution run in bfloat16, while LayerNorm, the attention softmax and the
residual stream stay in float32; the encoders always return float32. With
``residual_dtype=jnp.bfloat16`` as well, the residual stream between the blocks is bfloat16
too (half the bytes of the activations the blocks pass on and save for the backward pass;
LayerNorm still computes in float32).

Speed (exact rewrites, see ``docs/clip.md``): dense layers run as 2-D matmuls, the residual
stream as rows, q/k/v as one matmul, attention head-major, and the last layer only at the
pooled token.

Typical use::

    from fognet_jax import clip_weights
    from fognet_jax.models import clip
    model = clip_weights.load('/path/to/clip-vit-base-patch16')  # HF dir, OpenAI .pt, Orbax
    img = model.encode_image(pixels)      # (N, H, W, 3) CLIP-normalised -> (N, D)
    txt = model.encode_text(token_ids)    # (N, 77) int32 -> (N, D)
    small = clip.create('tiny', image_size=64, seed=0)   # random initialisation
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# OpenAI's image normalisation (RGB, for pixel values scaled to [0, 1]).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

LAYER_NORM_EPS = 1e-5
BATCH_NORM_EPS = 1e-5  # PyTorch BatchNorm2d's, as in OpenAI's ResNet towers


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

    for name in ('embed_dim', 'image_size', 'patch_size', 'vision_width', 'vision_heads',
                 'context_length', 'vocab_size', 'text_width', 'text_layers', 'text_heads'):
      value = getattr(self, name)
      if not positive_int(value):
        raise ValueError(f'CLIPConfig.{name} must be a positive integer, got {value!r}')
    layers = self.vision_layers
    if isinstance(layers, list):
      object.__setattr__(self, 'vision_layers', tuple(layers))
      layers = self.vision_layers
    if isinstance(layers, tuple):
      if len(layers) != 4 or not all(positive_int(n) for n in layers):
        raise ValueError('CLIPConfig.vision_layers must be a positive integer (ViT) or four '
                         f'positive block counts (ResNet), got {layers!r}')
      if self.image_size % 32:
        raise ValueError(f'CLIPConfig.image_size={self.image_size} must be a multiple of 32 '
                         'for a ResNet image tower')
      if (self.vision_width * 32) % self.vision_heads:
        raise ValueError(f'CLIPConfig.vision_heads={self.vision_heads} must divide the ResNet '
                         f'feature width 32 * vision_width = {self.vision_width * 32}')
    elif not positive_int(layers):
      raise ValueError(f'CLIPConfig.vision_layers must be a positive integer, got {layers!r}')
    if not self.is_resnet and self.vision_width % self.vision_heads:
      raise ValueError(f'CLIPConfig.vision_width={self.vision_width} is not divisible by '
                       f'vision_heads={self.vision_heads}')
    if self.text_width % self.text_heads:
      raise ValueError(f'CLIPConfig.text_width={self.text_width} is not divisible by '
                       f'text_heads={self.text_heads}')
    if not self.is_resnet and self.image_size % self.patch_size:
      raise ValueError(f'CLIPConfig.image_size={self.image_size} is not a multiple of '
                       f'patch_size={self.patch_size}')
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f'CLIPConfig.activation must be one of {sorted(_ACTIVATIONS)}, '
                       f'got {self.activation!r}')

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


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``."""
  return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS = {
    'quick_gelu': quick_gelu,
    'gelu': functools.partial(jax.nn.gelu, approximate=False),
}

CONFIGS: dict[str, CLIPConfig] = {
    'ViT-B/32': CLIPConfig(embed_dim=512, image_size=224, patch_size=32, vision_width=768,
                           vision_layers=12, vision_heads=12, text_width=512, text_layers=12,
                           text_heads=8),
    'ViT-B/16': CLIPConfig(embed_dim=512, image_size=224, patch_size=16, vision_width=768,
                           vision_layers=12, vision_heads=12, text_width=512, text_layers=12,
                           text_heads=8),
    'ViT-L/14': CLIPConfig(embed_dim=768, image_size=224, patch_size=14, vision_width=1024,
                           vision_layers=24, vision_heads=16, text_width=768, text_layers=12,
                           text_heads=12),
    'ViT-L/14@336': CLIPConfig(embed_dim=768, image_size=336, patch_size=14, vision_width=1024,
                               vision_layers=24, vision_heads=16, text_width=768,
                               text_layers=12, text_heads=12),
    'RN50': CLIPConfig(embed_dim=1024, image_size=224, vision_width=64,
                       vision_layers=(3, 4, 6, 3), vision_heads=32, text_width=512,
                       text_layers=12, text_heads=8),
    'RN101': CLIPConfig(embed_dim=512, image_size=224, vision_width=64,
                        vision_layers=(3, 4, 23, 3), vision_heads=32, text_width=512,
                        text_layers=12, text_heads=8),
    'RN50x4': CLIPConfig(embed_dim=640, image_size=288, vision_width=80,
                         vision_layers=(4, 6, 10, 6), vision_heads=40, text_width=640,
                         text_layers=12, text_heads=10),
    # Small model for tests and from-scratch experiments (full BPE vocabulary and context).
    'tiny': CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=64,
                       vision_layers=2, vision_heads=4, text_width=64, text_layers=2,
                       text_heads=4),
    # Its ResNet counterpart (stem width 8: feature width 256 before the attention pool).
    'tiny-rn': CLIPConfig(embed_dim=32, image_size=64, vision_width=8,
                          vision_layers=(1, 1, 1, 1), vision_heads=4, text_width=64,
                          text_layers=2, text_heads=4),
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


# --------------------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------------------


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # float32 statistics and output whatever the compute dtype; two-pass variance as torch.
  return nnx.LayerNorm(width, epsilon=LAYER_NORM_EPS, dtype=jnp.float32,
                       param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs)


def _normal(std: float):
  return nnx.initializers.normal(stddev=std)


ATTENTION_IMPLS = (None, 'xla', 'cudnn')

# cuDNN's fused attention takes sequence lengths that are multiples of this; shorter ones
# (197 vision tokens of ViT-B/16, 77 text tokens) are padded and the padding masked.
CUDNN_SEQ_MULTIPLE = 64


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


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool,
              impl: str | None = None, key_mask: jax.Array | None = None,
              scale: float | None = None) -> jax.Array:
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
    scale = q.shape[-1]**-0.5
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


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool,
                     implementation: str = 'cudnn', scale: float | None = None) -> jax.Array:
  """cuDNN fused attention on head-major (N, heads, L, d): pads L to a multiple of
  ``CUDNN_SEQ_MULTIPLE``, masks the padded keys, drops the padded queries.

  ``implementation`` is passed to ``jax.nn.dot_product_attention`` ('xla' runs the same
  padding and masking on any platform, for tests).
  """
  length = q.shape[2]
  padded = -(-length // CUDNN_SEQ_MULTIPLE) * CUDNN_SEQ_MULTIPLE
  # (N, heads, L, d) -> (N, L_padded, heads, d), the layout dot_product_attention takes
  to_bthd = lambda t: jnp.pad(t.transpose(0, 2, 1, 3),
                              ((0, 0), (0, padded - length), (0, 0), (0, 0)))
  n = q.shape[0]
  lengths = jnp.full((n,), length, jnp.int32) if padded != length else None
  out = jax.nn.dot_product_attention(
      to_bthd(q), to_bthd(k), to_bthd(v), is_causal=causal,
      query_seq_lengths=lengths, key_value_seq_lengths=lengths, scale=scale,
      implementation=implementation)
  return out[:, :length].transpose(0, 2, 1, 3)


class MultiHeadAttention(nnx.Module):
  """Self-attention with separate q/k/v projections (OpenAI's fused in_proj, split).

  The three projections are applied as one matmul (their kernels concatenated at the
  call), which keeps OpenAI's and Hugging Face's parameter layout and runs one large
  GEMM instead of three.
  """

  def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs,
               in_std: float, out_std: float, attention_impl: str | None = None):
    self.heads = heads
    self.query_scale = (width // heads)**-0.5
    self.attention_impl = attention_impl
    self.dtype = dtype
    linear = functools.partial(Linear, width, width, dtype=dtype, param_dtype=jnp.float32,
                               rngs=rngs)
    self.q_proj = linear(kernel_init=_normal(in_std))
    self.k_proj = linear(kernel_init=_normal(in_std))
    self.v_proj = linear(kernel_init=_normal(in_std))
    self.out_proj = linear(kernel_init=_normal(out_std))

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


class MLP(nnx.Module):
  """``c_fc`` -> activation -> ``c_proj``."""

  def __init__(self, width: int, hidden: int, activation: str, *, dtype, rngs: nnx.Rngs,
               fc_std: float, proj_std: float):
    self.activation = activation
    self.c_fc = Linear(width, hidden, dtype=dtype, param_dtype=jnp.float32,
                           kernel_init=_normal(fc_std), rngs=rngs)
    self.c_proj = Linear(hidden, width, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=_normal(proj_std), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.c_proj(_ACTIVATIONS[self.activation](self.c_fc(x)))


# The platforms on which keep_gradient stores the gradient ('cpu', 'cuda', 'rocm', 'tpu';
# 'gpu' means both GPU kinds); on the others it is the identity both ways. A conditional on
# a GPU may wait for its predicate on the host, so GPUs are left out until measured
# (benchmarks/fusion_reads.py sets this to try them).
KEEP_GRADIENT_PLATFORMS = ('cpu',)


@jax.custom_jvp
def keep_gradient(x: jax.Array) -> jax.Array:
  """The identity, whose gradient XLA:CPU computes once and stores.

  In the backward pass the gradient of the residual stream at a block is the sum of the
  contributions of every later block. XLA:CPU's fusion does not store that sum: each fusion
  that reads it recomputes it from all those contributions, so the deepest blocks' fusions
  read 40 and more activation-sized arrays (docs/perf_notes.md, "A fusion barrier for the
  residual gradient"). On CPU the tangent of this function goes through a conditional, and
  so does its transpose, the gradient: XLA does not fuse across a conditional, so the sum is
  computed once, into a buffer. On other platforms (see ``KEEP_GRADIENT_PLATFORMS``) it is
  the identity both ways. Values are unchanged on every platform, and forward-mode
  differentiation (``jax.jvp``, ``jax.hessian``) works as through the identity.
  """
  return x


def _stored(t: jax.Array) -> jax.Array:
  """``t``, through a conditional on the platforms of ``KEEP_GRADIENT_PLATFORMS``."""
  def through_conditional(t):
    # A predicate XLA cannot fold (a constant one lets it drop the conditional), with no
    # data dependence (a sharded array's element would need a collective). The second
    # branch never runs; it computes something so that jax does not forward the operand
    # past the conditional.
    keep = jax.lax.optimization_barrier(jnp.bool_(True))
    return jax.lax.cond(keep, lambda t: t, lambda t: t * 1.0, t)
  platforms = {p for name in KEEP_GRADIENT_PLATFORMS
               for p in (('cuda', 'rocm') if name == 'gpu' else (name,))}
  branches = {platform: through_conditional for platform in sorted(platforms)}
  return jax.lax.platform_dependent(t, **branches, default=lambda t: t)


@keep_gradient.defjvp
def _keep_gradient_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return x, _stored(t)


class ResidualAttentionBlock(nnx.Module):
  """Pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

  def __init__(self, width: int, heads: int, mlp_dim: int, activation: str, *, layers: int,
               dtype, rngs: nnx.Rngs, attention_impl: str | None = None):
    # OpenAI's initialisation (CLIP.initialize_parameters).
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * layers)**-0.5
    fc_std = (2 * width)**-0.5
    self.ln_1 = _layer_norm(width, rngs)
    self.attn = MultiHeadAttention(width, heads, dtype=dtype, rngs=rngs, in_std=attn_std,
                                   out_std=proj_std, attention_impl=attention_impl)
    self.ln_2 = _layer_norm(width, rngs)
    self.mlp = MLP(width, mlp_dim, activation, dtype=dtype, rngs=rngs, fc_std=fc_std,
                   proj_std=proj_std)

  def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
    """(N, L, width) -> (N, L, width)."""
    n, length, width = x.shape
    return self.flat(x.reshape(n * length, width), length, causal).reshape(x.shape)

  def flat(self, x: jax.Array, length: int, causal: bool = False) -> jax.Array:
    """The block on its tokens flattened to rows: (N*L, width) -> (N*L, width), L = length.

    :class:`Transformer` keeps its residual stream in this form from the first block to the
    last. With no reshape between the residual adds, XLA:CPU recomputes the stream's
    gradient in fewer places in the backward pass (docs/perf_notes.md, "Where the rest of
    the CPU gap is"). The same arithmetic as on (N, L, width). The stream's gradient is
    stored at both residual adds (:func:`keep_gradient`).
    """
    # Sub-layer outputs are added in the residual stream's dtype (float32 unless residual_dtype).
    x = keep_gradient(x)
    attn = self.attn(self.ln_1(x).reshape(-1, length, x.shape[-1]), causal=causal)
    x = keep_gradient(x + attn.reshape(x.shape).astype(x.dtype))
    return x + self.mlp(self.ln_2(x)).astype(x.dtype)

  def row(self, x: jax.Array, rows: jax.Array, causal: bool = False) -> jax.Array:
    """``__call__(x, causal)[n, rows[n]]`` for (N, L, width) ``x`` and (N,) ``rows``,
    computing the attention query, output projection and MLP of that row only: (N, width)."""
    x_row = jnp.take_along_axis(x, rows[:, None, None], axis=1)[:, 0]  # (N, width)
    x_row = x_row + self.attn.attend_row(self.ln_1(x), rows, causal=causal).astype(x.dtype)
    return x_row + self.mlp(self.ln_2(x_row)).astype(x.dtype)


class Transformer(nnx.Module):
  """A stack of residual attention blocks, optionally rematerialised block by block."""

  def __init__(self, width: int, layers: int, heads: int, mlp_dim: int, activation: str, *,
               dtype, remat: bool, rngs: nnx.Rngs, attention_impl: str | None = None):
    self.remat = remat
    self.resblocks = nnx.List([
        ResidualAttentionBlock(width, heads, mlp_dim, activation, layers=layers, dtype=dtype,
                               rngs=rngs, attention_impl=attention_impl)
        for _ in range(layers)
    ])

  def __call__(self, x: jax.Array, *, causal: bool = False,
               rows: jax.Array | None = None) -> jax.Array:
    """(N, L, width) -> (N, L, width); with ``rows`` ((N,) int), only the output at
    ``rows[n]`` of each sequence, (N, width).

    With ``rows`` the last block computes its query, output projection and MLP for those
    positions alone (the pooled outputs are exact: nothing else of the last layer is read).
    """
    blocks = list(self.resblocks)
    last = blocks.pop() if rows is not None else None
    n, length, width = x.shape
    x = x.reshape(n * length, width)  # the residual stream as rows (ResidualAttentionBlock.flat)
    for block in blocks:
      if self.remat:
        x = nnx.remat(_apply_flat, static_argnums=(2, 3))(block, x, length, causal)
      else:
        x = block.flat(x, length, causal)
    x = x.reshape(n, length, width)
    if last is None:
      return x
    if self.remat:
      return nnx.remat(_apply_row, static_argnums=(3,))(last, x, rows, causal)
    return last.row(x, rows, causal)


def _apply(module: nnx.Module, x: jax.Array, *args) -> jax.Array:
  """``module(x, *args)``: a function of the module, for ``nnx.remat``."""
  return module(x, *args)


def _apply_flat(block: ResidualAttentionBlock, x: jax.Array, length: int,
                causal: bool) -> jax.Array:
  """``block.flat(x, length, causal)``, for ``nnx.remat``."""
  return block.flat(x, length, causal)


def _apply_row(block: ResidualAttentionBlock, x: jax.Array, rows: jax.Array,
               causal: bool) -> jax.Array:
  """``block.row(x, rows, causal)``, for ``nnx.remat``."""
  return block.row(x, rows, causal)


# --------------------------------------------------------------------------------------
# Position-embedding interpolation (matches torch bicubic, align_corners=False).
# --------------------------------------------------------------------------------------


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


def interpolate_pos_embed(pos_embed: jax.Array, grid_in: tuple[int, int],
                          grid_out: tuple[int, int]) -> jax.Array:
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
  patch_pos = jnp.einsum('Hh,hwc,Ww->HWc', mh, patch_pos.astype(jnp.float32), mw,
                         precision=jax.lax.Precision.HIGHEST)
  patch_pos = einops.rearrange(patch_pos, 'h w c -> (h w) c')
  return jnp.concatenate([cls_pos, patch_pos.astype(pos_embed.dtype)], axis=0)


# --------------------------------------------------------------------------------------
# The two towers and the model.
# --------------------------------------------------------------------------------------


class VisionTransformer(nnx.Module):
  """CLIP image tower: (N, H, W, 3) CLIP-normalised pixels -> (N, embed_dim)."""

  def __init__(self, config: CLIPConfig, *, dtype, remat: bool, rngs: nnx.Rngs,
               attention_impl: str | None = None, residual_dtype=jnp.float32):
    width, p = config.vision_width, config.patch_size
    self.config = config
    self.dtype = dtype
    self.residual_dtype = residual_dtype
    scale = width**-0.5
    self.conv1 = nnx.Conv(3, width, kernel_size=(p, p), strides=(p, p), padding='VALID',
                          use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (width,)))
    self.positional_embedding = nnx.Param(
        scale * jax.random.normal(rngs.params(), (config.grid_size**2 + 1, width)))
    self.ln_pre = _layer_norm(width, rngs)
    self.transformer = Transformer(width, config.vision_layers, config.vision_heads,
                                   config.vision_mlp, config.activation, dtype=dtype,
                                   remat=remat, rngs=rngs, attention_impl=attention_impl)
    self.ln_post = _layer_norm(width, rngs)
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
      raise ValueError(f'Image {pixels.shape[1]}x{pixels.shape[2]} is smaller than the '
                       f'patch size {p}')
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
    x = self.ln_post(self.transformer(x, causal=False, rows=jnp.zeros((x.shape[0],), jnp.int32)))
    return jnp.dot(x.astype(self.dtype), self.proj[...].astype(self.dtype),
                   preferred_element_type=jnp.float32).astype(jnp.float32)


class TextTransformer(nnx.Module):
  """CLIP text tower: (N, L<=context_length) int32 token ids -> (N, embed_dim).

  Causal attention; the output is read at each row's largest token id (end-of-text).
  """

  def __init__(self, config: CLIPConfig, *, dtype, remat: bool, rngs: nnx.Rngs,
               attention_impl: str | None = None, residual_dtype=jnp.float32):
    width = config.text_width
    self.config = config
    self.dtype = dtype
    self.residual_dtype = residual_dtype
    self.token_embedding = nnx.Embed(config.vocab_size, width, dtype=jnp.float32,
                                     param_dtype=jnp.float32, embedding_init=_normal(0.02),
                                     rngs=rngs)
    self.positional_embedding = nnx.Param(
        0.01 * jax.random.normal(rngs.params(), (config.context_length, width)))
    self.transformer = Transformer(width, config.text_layers, config.text_heads,
                                   config.text_mlp, config.activation, dtype=dtype,
                                   remat=remat, rngs=rngs, attention_impl=attention_impl)
    self.ln_final = _layer_norm(width, rngs)
    self.text_projection = nnx.Param(
        width**-0.5 * jax.random.normal(rngs.params(), (width, config.embed_dim)))

  def tokens(self, token_ids: jax.Array) -> jax.Array:
    """Final-layer token features after ``ln_final``: (N, L) -> (N, L, width)."""
    return self.ln_final(self.transformer(self._embed(token_ids), causal=True))

  def _embed(self, token_ids: jax.Array) -> jax.Array:
    """Token plus position embeddings: (N, L) -> (N, L, width)."""
    if token_ids.ndim != 2 or token_ids.shape[1] > self.config.context_length:
      raise ValueError(f'encode_text expects (N, L<={self.config.context_length}) token ids, '
                       f'got shape {token_ids.shape}')
    length = token_ids.shape[1]
    x = self.token_embedding(token_ids)  # (N, L, width)
    x = x + self.positional_embedding[...][:length].astype(jnp.float32)[None]
    return x.astype(self.residual_dtype)

  def __call__(self, token_ids: jax.Array) -> jax.Array:
    eot = jnp.argmax(token_ids, axis=-1)  # (N,) end-of-text = largest id
    # (N, width): the last layer at each row's end-of-text token (computed for it alone)
    x = self.ln_final(self.transformer(self._embed(token_ids), causal=True, rows=eot))
    return jnp.dot(x.astype(self.dtype), self.text_projection[...].astype(self.dtype),
                   preferred_element_type=jnp.float32).astype(jnp.float32)



# --------------------------------------------------------------------------------------
# OpenAI's ModifiedResNet image tower (RN50, RN101, RN50x4, ...).
# --------------------------------------------------------------------------------------


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
  return nnx.Conv(cin, cout, kernel_size=(k, k), strides=(stride, stride),
                  padding=((k // 2, k // 2), (k // 2, k // 2)), use_bias=False, dtype=dtype,
                  param_dtype=jnp.float32,
                  kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
                  rngs=rngs)


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

  def __init__(self, grid: int, width: int, heads: int, out_dim: int, *, dtype,
               rngs: nnx.Rngs):
    self.grid = grid
    self.heads = heads
    self.positional_embedding = nnx.Param(
        width**-0.5 * jax.random.normal(rngs.params(), (grid * grid + 1, width)))
    std = width**-0.5
    def linear(cout):
      return nnx.Linear(width, cout, dtype=dtype, param_dtype=jnp.float32,
                        kernel_init=_normal(std), bias_init=nnx.initializers.zeros_init(),
                        rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj = linear(width), linear(width), linear(width)
    self.c_proj = linear(out_dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, gh, gw, c = x.shape
    x = x.reshape(n, gh * gw, c).astype(jnp.float32)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    x = x + interpolate_pos_embed(self.positional_embedding[...], (self.grid, self.grid),
                                  (gh, gw))[None]
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
        stage.append(Bottleneck(inplanes, planes, 2 if (i > 0 and b == 0) else 1, dtype=dtype,
                                rngs=rngs))
        inplanes = planes * Bottleneck.expansion
      stages.append(nnx.List(stage))
    self.layers = nnx.List(stages)
    self.attnpool = AttentionPool2d(config.grid_size, width * 32, config.vision_heads,
                                    config.embed_dim, dtype=dtype, rngs=rngs)

  def features(self, pixels: jax.Array) -> jax.Array:
    """Final feature map before the attention pool: (N, H/32, W/32, 32 * vision_width)."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f'encode_image expects (N, H, W, 3) pixels, got shape {pixels.shape}')
    if pixels.shape[1] < 32 or pixels.shape[2] < 32:
      raise ValueError(f'Image {pixels.shape[1]}x{pixels.shape[2]} is smaller than the '
                       'ResNet tower\'s downsampling of 32')
    x = pixels.astype(self.dtype)
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
      x = jax.nn.relu(bn(conv(x)))
    x = _avg_pool(x, 2)
    for stage in self.layers:
      for block in stage:
        x = nnx.remat(_apply)(block, x) if self.remat else block(x)
    return x

  def __call__(self, pixels: jax.Array) -> jax.Array:
    return self.attnpool(self.features(pixels))


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

  def __init__(self, config: CLIPConfig, *, dtype=jnp.float32, remat: bool = False,
               attention_impl: str | None = None, residual_dtype=None, rngs: nnx.Rngs):
    dtype = canonical_dtype(dtype)
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}')
    residual_dtype = jnp.dtype(jnp.float32) if residual_dtype is None else canonical_dtype(
        residual_dtype)
    if residual_dtype not in (jnp.dtype(jnp.float32), dtype):
      raise ValueError(f'residual_dtype must be None, float32 or the compute dtype {dtype}, '
                       f'got {residual_dtype}')
    self.config = config
    self.dtype = dtype
    self.remat = remat
    if config.is_resnet:
      self.visual = ModifiedResNet(config, dtype=dtype, remat=remat, rngs=rngs)
    else:
      self.visual = VisionTransformer(config, dtype=dtype, remat=remat, rngs=rngs,
                                      attention_impl=attention_impl,
                                      residual_dtype=residual_dtype)
    self.text = TextTransformer(config, dtype=dtype, remat=remat, rngs=rngs,
                                attention_impl=attention_impl, residual_dtype=residual_dtype)
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


def create(name_or_config: str | CLIPConfig = 'ViT-B/16', *, dtype=jnp.float32,
           remat: bool = False, seed: int = 0, attention_impl: str | None = None,
           residual_dtype=None, **overrides: Any) -> CLIP:
  """Builds a randomly initialised CLIP from a config name (or config) plus overrides.

  Example: ``clip.create('tiny', image_size=64, seed=1)``.
  """
  config = get_config(name_or_config, **overrides)
  return CLIP(config, dtype=dtype, remat=remat, attention_impl=attention_impl,
              residual_dtype=residual_dtype, rngs=nnx.Rngs(seed))


def count_params(tree: Any) -> int:
  """Number of scalar parameters: of a module's ``nnx.Param`` variables (shared ones counted
  once), or of every leaf of a parameter pytree (arrays or shape structs)."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, nnx.Param)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
