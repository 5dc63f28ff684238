"""FogNet's building blocks: Fog-Aware Selection, Mutual Enhancement, the temporal transformer.

Fog-Aware Selection (eqs. 1-2, :class:`FogAwareSelection`, options :class:`FASOptions`),
Mutual Enhancement (eqs. 3-5, :class:`MutualEnhancement` on :class:`CrossAttention`, options
:class:`MEOptions`) and ActionCLIP's temporal fusion "Transf"
(:class:`TemporalTransformer`), each acting on per-frame CLIP image embeddings of shape
(B, T, D). :mod:`fognet_jax.models.fognet` assembles them into the model; its docstring
describes the readings of the paper they implement.
"""

from __future__ import annotations

import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models import clip

Array = jax.Array
FAS_CONCAT = ('tokens', 'channels')


@dataclasses.dataclass(frozen=True)
class FASOptions:
  """Fog-Aware Selection's options (see :class:`FogAwareSelection`)."""

  parameter_free: bool = False
  num_heads: int = 8
  temperature: float = 1.0
  init_scale: float = 0.1
  concat: str = 'channels'


@dataclasses.dataclass(frozen=True)
class MEOptions:
  """Mutual Enhancement's options (see :class:`MutualEnhancement`)."""

  shared_weights: bool = True
  num_heads: int = 1
  init_scale: float = 0.1


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  """``x / max(||x||, eps)`` along ``axis``, computed in float32."""
  x = jnp.asarray(x, jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def _normal(std: float):
  return nnx.initializers.normal(stddev=std)


def attention(q: Array, k: Array, v: Array, num_heads: int) -> Array:
  """``softmax(Q K^T / sqrt(d_head)) V`` per head; softmax in float32.

  Args:
    q: (B, N, D) projected queries; k, v: (B, M, D) projected keys / values.
    num_heads: number of heads, must divide D.

  Returns:
    (B, N, D) in the dtype of ``v``.
  """
  split = lambda t: einops.rearrange(t, 'b n (h d) -> b h n d', h=num_heads)
  out = clip.attention(split(q), split(k), split(v), causal=False)  # (B, H, N, d)
  return einops.rearrange(out, 'b h n d -> b n (h d)')


class FogAwareSelection(nnx.Module):
  """Fog-Aware Selection (eqs. 1-2): self-attention over a set of frame tokens.

  ``__call__(x)`` maps (B, N, D) -> (B, N, D): inference runs it on the T foggy tokens.
  Training joins the two streams and splits the output (``select_pair``).

  Args:
    dim: embedding width D.
    parameter_free: False (default): ``x + Wo MHA(x Wq, x Wk, x Wv)`` with learned
      projections (biases included). True: eq. 1 literally,
      ``sum_j softmax_j(cos(x_i, x_j) / temperature) x_j``, no parameters, no residual.
    concat: how training joins the streams (``select_pair``): 'channels' (T tokens of
      width 2D) or 'tokens' (2T tokens); see :mod:`fognet_jax.models.fognet`'s docstring.
    num_heads: heads of the learned variant (must divide D).
    temperature: softmax temperature of the parameter-free variant (eq. 1: 1.0).
    init_scale: the out projection starts with std ``init_scale / sqrt(D)`` (residual
      branch small at first: the pretrained CLIP embedding passes nearly unchanged).
  """

  def __init__(
    self,
    dim: int,
    *,
    parameter_free: bool = False,
    num_heads: int = 8,
    temperature: float = 1.0,
    init_scale: float = 0.1,
    concat: str = 'channels',
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if concat not in FAS_CONCAT:
      raise ValueError(f'FogAwareSelection concat must be one of {FAS_CONCAT}, got {concat!r}')
    self.concat = concat
    self.parameter_free = bool(parameter_free)
    self.temperature = float(temperature)
    self.num_heads = int(num_heads)
    self.dtype = dtype
    if self.parameter_free:
      return
    if dim % self.num_heads:
      raise ValueError(
        f'FogAwareSelection num_heads={self.num_heads} does not divide the embedding width {dim}'
      )
    linear = functools.partial(
      nnx.Linear, dim, dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.q = linear(kernel_init=_normal(dim**-0.5))
    self.k = linear(kernel_init=_normal(dim**-0.5))
    self.v = linear(kernel_init=_normal(dim**-0.5))
    self.out = linear(kernel_init=_normal(init_scale * dim**-0.5))

  def __call__(self, x: Array) -> Array:
    if self.parameter_free:
      xf = x.astype(jnp.float32)
      xn = l2_normalize(xf)
      sim = jnp.einsum('bnd,bmd->bnm', xn, xn) / self.temperature  # (B, N, N) cosines
      weights = jax.nn.softmax(sim, axis=-1)
      return jnp.einsum('bnm,bmd->bnd', weights, xf).astype(x.dtype)
    h = x.astype(self.dtype)
    out = self.out(attention(self.q(h), self.k(h), self.v(h), self.num_heads))
    return x + out.astype(x.dtype)

  def select_pair(self, v_c: Array, v_f: Array) -> tuple[Array, Array]:
    """Training: eq. 1 over ``[v_c ; v_f]``, eq. 2 chunk -> (v_c^A, v_f^A), each (B, T, D)."""
    if self.concat == 'channels':
      return self._select_pair_channels(v_c, v_f)
    t = v_c.shape[1]
    v_att = self(jnp.concatenate([v_c, v_f], axis=1))  # (B, 2T, D)
    return v_att[:, :t], v_att[:, t:]

  def _select_pair_channels(self, v_c: Array, v_f: Array) -> tuple[Array, Array]:
    """Eq. 1 over the T tokens ``[v_c,i ; v_f,i]`` of width 2D; eq. 2 splits the channels."""
    if self.parameter_free:
      cat = jnp.concatenate([v_c, v_f], axis=-1).astype(jnp.float32)  # (B, T, 2D)
      xn = l2_normalize(cat)
      sim = jnp.einsum('btd,bsd->bts', xn, xn) / self.temperature  # (B, T, T)
      w = jax.nn.softmax(sim, axis=-1)
      att = jnp.einsum('bts,bsd->btd', w, cat)
      d = v_c.shape[-1]
      return att[..., :d].astype(v_c.dtype), att[..., d:].astype(v_f.dtype)
    # Per head, [q_c ; q_f] . [k_c ; k_f] / sqrt(2 d_head), with q scaled by 1/sqrt(2): the
    # mean of the two streams' q.k / sqrt(d_head), which at inference (one stream) is the
    # plain q_f.k_f / sqrt(d_head). Values [v_c ; v_f] per head, split after the attention.
    split = lambda t: einops.rearrange(t, 'b n (h d) -> b h n d', h=self.num_heads)
    hc, hf = v_c.astype(self.dtype), v_f.astype(self.dtype)
    q = jnp.concatenate([split(self.q(hc)), split(self.q(hf))], axis=-1) * (2.0**-0.5)
    k = jnp.concatenate([split(self.k(hc)), split(self.k(hf))], axis=-1)
    v = jnp.concatenate([split(self.v(hc)), split(self.v(hf))], axis=-1)  # (B, H, T, 2d)
    att = clip.attention(q, k, v, causal=False)  # (B, H, T, 2d)
    dh = att.shape[-1] // 2
    merge = lambda t: einops.rearrange(t, 'b h n d -> b n (h d)')
    out_c = self.out(merge(att[..., :dh])).astype(v_c.dtype)
    out_f = self.out(merge(att[..., dh:])).astype(v_f.dtype)
    return v_c + out_c, v_f + out_f


class CrossAttention(nnx.Module):
  """``Attn(x_q Wq, x_kv Wk, x_kv Wv)`` without bias or output projection (eq. 3)."""

  def __init__(
    self,
    dim: int,
    *,
    num_heads: int = 1,
    init_scale: float = 0.1,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if dim % num_heads:
      raise ValueError(
        f'CrossAttention num_heads={num_heads} does not divide the embedding width {dim}'
      )
    self.num_heads = int(num_heads)
    self.dtype = dtype
    linear = functools.partial(
      nnx.Linear, dim, dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.wq = linear(kernel_init=_normal(dim**-0.5))
    self.wk = linear(kernel_init=_normal(dim**-0.5))
    self.wv = linear(kernel_init=_normal(init_scale * dim**-0.5))

  def __call__(self, x_q: Array, x_kv: Array) -> Array:
    q = self.wq(x_q.astype(self.dtype))
    kv = x_kv.astype(self.dtype)
    return attention(q, self.wk(kv), self.wv(kv), self.num_heads)


class MutualEnhancement(nnx.Module):
  """Mutual Enhancement (eqs. 3-5): bidirectional cross-attention with residuals.

  ``__call__(v_c^A, v_f^A) -> (v_c^D, v_f^D)`` with
  ``v_f^D = Attn(Q_c, K_f, V_f) + v_f^A`` and ``v_c^D = Attn(Q_f, K_c, V_c) + v_c^A``.
  ``infer(v_f^A) = Attn(Q_f, K_f, V_f) + v_f^A`` (inference, foggy stream only).

  Args:
    shared_weights: True (default, the paper's notation): one Wq/Wk/Wv for both directions.
      False: ``to_foggy`` (produces v_f^D, also used at inference) and ``to_clean`` own
      separate sets.
  """

  def __init__(
    self,
    dim: int,
    *,
    shared_weights: bool = True,
    num_heads: int = 1,
    init_scale: float = 0.1,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.shared_weights = bool(shared_weights)
    make = functools.partial(
      CrossAttention, dim, num_heads=num_heads, init_scale=init_scale, dtype=dtype, rngs=rngs
    )
    self.to_foggy = make()
    self.to_clean = None if self.shared_weights else make()

  def __call__(self, v_c: Array, v_f: Array) -> tuple[Array, Array]:
    to_clean = self.to_foggy if self.shared_weights else self.to_clean
    v_f_d = self.to_foggy(v_c, v_f).astype(v_f.dtype) + v_f  # eq. 4: clean queries foggy
    v_c_d = to_clean(v_f, v_c).astype(v_c.dtype) + v_c  # eq. 5: foggy queries clean
    return v_c_d, v_f_d

  def infer(self, v_f: Array) -> Array:
    return self.to_foggy(v_f, v_f).astype(v_f.dtype) + v_f


class TemporalTransformer(nnx.Module):
  """ActionCLIP's temporal fusion "Transf": ``mean_T(x + Transformer(x + pos))``.

  Frame position embeddings (``max_frames`` rows), a stack of CLIP residual attention
  blocks (``clip.Transformer``), a residual around it, then the mean over T.
  """

  def __init__(
    self,
    dim: int,
    *,
    layers: int,
    heads: int,
    max_frames: int,
    dtype=jnp.float32,
    remat: bool = False,
    attention_impl: str | None = None,
    rngs: nnx.Rngs,
  ):
    self.max_frames = int(max_frames)
    self.frame_position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_frames, dim)))
    self.transformer = clip.Transformer(
      dim,
      layers,
      heads,
      4 * dim,
      'quick_gelu',
      dtype=dtype,
      remat=remat,
      rngs=rngs,
      attention_impl=attention_impl,
    )

  def __call__(self, x: Array) -> Array:
    t = x.shape[1]
    if t > self.max_frames:
      raise ValueError(
        f'clip has {t} frames but the temporal transformer has position '
        f'embeddings for max_frames={self.max_frames}'
      )
    xf = x.astype(jnp.float32)
    h = self.transformer(xf + self.frame_position[...][:t][None])
    return jnp.mean(xf + h.astype(jnp.float32), axis=1)
