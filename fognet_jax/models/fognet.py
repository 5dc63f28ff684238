"""FogNet (two-stream CLIP with FAS, ME, CSA) and the single-stream ActionCLIP baseline.

Section 4 of "Seeing Through Fog: Towards Fog-Invariant Action Recognition". Every module
here acts on per-frame CLIP image embeddings ``v`` of shape (B, T, D): a clip of T frames
goes through the CLIP image tower frame by frame (frames folded into the batch). FAS, ME and
the temporal transformer are the modules of :mod:`fognet_jax.models.blocks`; this module
assembles them with the CLIP towers into :class:`FogNet`.

Training (``FogNet.train_outputs``), ``arch='fognet'``::

    v_c, v_f            = CLIP image tower on the clean / foggy clip          (B, T, D) each
    v_c^A, v_f^A        = FAS([v_c ; v_f])   self-attention over T frame tokens eqs. 1-2
                          of width 2D (both streams of frame i), split back
    v_f^D               = Attn(Q = v_c^A Wq, K = v_f^A Wk, V = v_f^A Wv) + v_f^A   eqs. 3-4
    v_c^D               = Attn(Q = v_f^A Wq, K = v_c^A Wk, V = v_c^A Wv) + v_c^A   eq. 5
    L_temp              = CSA on (v_f^D, v_c^D)  (in ``losses``)                eqs. 6-7
    video_f / video_c   = temporal fusion (mean over T) of v_f^D / v_c^D
    logits              = exp(logit_scale) * cos(video, text embedding of each class)

Inference (``FogNet.predict``) takes the foggy clip only: FAS runs over the T foggy tokens,
ME uses the foggy stream as query, key and value, there is no CSA.

Readings of the paper (the alternative is a constructor argument, set from the config's
``model`` block by ``fognet_jax.weights.create_model``; the default is listed first):

* FAS (``fas``, :class:`blocks.FASOptions`; ``model.fas``). Default ``parameter_free=False``: multi-head self-attention with
  learned q/k/v/out projections and a residual, ``v + Wo MHA(v Wq, v Wk, v Wv)``. With
  ``parameter_free=True``: eq. 1 literally, ``v_att[i] = sum_j softmax_j(cos(v_i, v_j) /
  temperature) v_j``, no parameters, no residual. What ``[v_c ; v_f]`` concatenates
  (``concat``): 'channels' (default): the two D-wide embeddings of each frame, so the sums
  run to T as eq. 1 writes them: one T x T attention whose logits come from both streams (the
  cosine of the 2D-wide concatenation; learned: the mean of the two streams' scaled q.k)
  weighs each stream's own frames, and ``chunk(v_att, 2)`` (eq. 2) splits the 2D channels
  back. A foggy output then holds foggy frames only, weighed with help of the clean stream,
  as at the foggy-only test. 'tokens': the 2T frame tokens of both streams, every token
  attends over all 2T, so a foggy output mixes in clean frames (eq. 1's sums then run to 2T,
  not T) that the foggy-only test does not have. Inference (foggy only) is the same for
  both readings.
* ME (``me``, :class:`blocks.MEOptions`; ``model.me``). Default ``shared_weights=True``: one set Wq, Wk, Wv used in both
  directions (the paper's notation); ``False`` gives each direction its own set, and
  inference then uses the set of the direction producing ``v_f^D``. ``num_heads`` (default
  1, the paper's single attention) splits the projections into heads; there is no output
  projection (eqs. 3-5 have none). ``Attn(Q, K, V) = softmax(Q K^T / sqrt(d_head)) V``.
* Switches for Table 5a with two streams: a module that is off is the identity
  (``v^A = v`` without FAS, ``v^D = v^A`` without ME), CSA off drops L_temp. So
  "FAS only" = joint attention over both streams, then mean; "ME only" = cross-attention
  between the raw CLIP frame embeddings; "CSA only" = L_temp on the raw frame embeddings.
  With all three off and ``arch='fognet'`` the model is a two-stream CLIP whose clean
  stream still gives L_c. The paper's baseline row is ``arch='actionclip'`` (one stream).
* ActionCLIP baseline (``arch='actionclip'``): the same CLIP towers, one stream, no
  FAS/ME/CSA, ``temporal_fusion='mean'`` or ``'transformer'`` (ActionCLIP's "Transf": frame
  position embeddings, a small transformer, a residual, then the mean over T). What it is
  trained on is ``train_stream``: 'foggy' (default; Table 5a baseline), 'clean', or
  'clean+foggy' (both streams stacked into one batch of 2B single-stream videos;
  Table 5b). ``temporal_fusion='transformer'`` also works for ``arch='fognet'`` (applied to
  v^D of each stream).
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from fognet_jax.models import blocks
from fognet_jax.models import clip

Array = jax.Array
ARCHS = ('fognet', 'actionclip')
TRAIN_STREAMS = ('foggy', 'clean', 'clean+foggy')
TEMPORAL_FUSIONS = ('mean', 'transformer')


def similarity_logits(
  video: Array, text: Array, logit_scale: Array, max_logit_scale: float = 100.0
) -> Array:
  """Scaled cosine similarities, fp32.

  Args:
    video: (B, D) video embeddings (any scale, any dtype).
    text: (C, D) or (K, C, D) class prompt embeddings.
    logit_scale: scalar, log of the inverse temperature (CLIP's ``logit_scale``).
    max_logit_scale: clip for ``exp(logit_scale)``.

  Returns:
    (B, C) or (B, K, C) logits ``min(exp(logit_scale), max) * cos(video, text)``.
  """
  scale = jnp.minimum(jnp.exp(jnp.asarray(logit_scale, jnp.float32)), max_logit_scale)
  v = blocks.l2_normalize(video)
  t = blocks.l2_normalize(text)
  if t.ndim == 2:
    return scale * jnp.einsum('bd,cd->bc', v, t)
  if t.ndim == 3:
    return scale * jnp.einsum('bd,kcd->bkc', v, t)
  raise ValueError(f'text embeddings must be (C, D) or (K, C, D), got shape {t.shape}')


class FogNet(nnx.Module):
  """FogNet / ActionCLIP video classifier on top of a CLIP model.

  Args:
    clip_model: the CLIP towers (``clip.CLIP``), random or loaded with pretrained weights.
    arch: 'fognet' (two streams, FAS / ME / CSA) or 'actionclip' (one stream, the baseline).
    fas: Fog-Aware Selection's options, or None for no FAS (``v^A = v``); two streams only.
    me: Mutual Enhancement's options, or None for no ME (``v^D = v^A``); two streams only.
    train_stream: what the baseline trains on: 'foggy', 'clean' or 'clean+foggy'.
    temporal_fusion: 'mean' over T, or 'transformer' (ActionCLIP's "Transf").
    temporal_layers / temporal_heads / max_frames: the temporal transformer's depth, heads
      (None: ``embed_dim // 64``, at least 1) and number of frame position embeddings.
    frame_centering: subtract each clip's mean frame before the image tower.
    dtype: compute dtype of FAS, ME and the temporal transformer; params stay float32.
    remat / attention_impl: as :class:`clip.CLIP`'s, for the temporal transformer.
    rngs: random streams for the FAS / ME / temporal parameters.
    attention_impl: the temporal transformer's attention (``clip.attention``'s `impl`).
  """

  def __init__(
    self,
    clip_model: clip.CLIP,
    *,
    arch: str = 'fognet',
    fas: blocks.FASOptions | None = blocks.FASOptions(),
    me: blocks.MEOptions | None = blocks.MEOptions(),
    train_stream: str = 'foggy',
    temporal_fusion: str = 'mean',
    temporal_layers: int = 6,
    temporal_heads: int | None = None,
    max_frames: int = 32,
    frame_centering: bool = False,
    dtype=jnp.float32,
    remat: bool = False,
    attention_impl: str | None = None,
    rngs: nnx.Rngs,
  ):
    for name, value, known in (
      ('arch', arch, ARCHS),
      ('train_stream', train_stream, TRAIN_STREAMS),
      ('temporal_fusion', temporal_fusion, TEMPORAL_FUSIONS),
    ):
      if value not in known:
        raise ValueError(f'FogNet {name} must be one of {known}, got {value!r}')
    self.clip = clip_model
    dtype = clip.canonical_dtype(dtype)
    dim = clip_model.config.embed_dim
    self.arch = arch
    two = arch == 'fognet'
    self.train_stream = train_stream
    self.frame_centering = bool(frame_centering)
    self.fas = (
      blocks.FogAwareSelection(
        dim,
        parameter_free=fas.parameter_free,
        num_heads=fas.num_heads,
        temperature=fas.temperature,
        init_scale=fas.init_scale,
        concat=fas.concat,
        dtype=dtype,
        rngs=rngs,
      )
      if two and fas is not None
      else None
    )
    self.me = (
      blocks.MutualEnhancement(
        dim,
        shared_weights=me.shared_weights,
        num_heads=me.num_heads,
        init_scale=me.init_scale,
        dtype=dtype,
        rngs=rngs,
      )
      if two and me is not None
      else None
    )
    if temporal_fusion == 'transformer':
      heads = temporal_heads or max(1, dim // 64)
      if dim % heads:
        raise ValueError(f'FogNet temporal_heads={heads} does not divide the embedding width {dim}')
      self.temporal = blocks.TemporalTransformer(
        dim,
        layers=temporal_layers,
        heads=heads,
        max_frames=max_frames,
        dtype=dtype,
        remat=remat,
        attention_impl=attention_impl,
        rngs=rngs,
      )
    else:
      self.temporal = None

  # ---------------------------------------------------------------- towers
  @property
  def logit_scale(self) -> Array:
    return self.clip.logit_scale[...]

  def encode_text(self, tokens: Array) -> Array:
    """(N, context_length) int32 -> (N, D) float32 text embeddings (unnormalised)."""
    return self.clip.encode_text(tokens)

  def encode_frames(self, video: Array) -> Array:
    """(B, T, H, W, 3) CLIP-normalised frames -> (B, T, D) per-frame image embeddings."""
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f'video clips must be (B, T, H, W, 3), got shape {video.shape}')
    b = video.shape[0]
    if self.frame_centering:
      video = video - jnp.mean(video, axis=1, keepdims=True)  # (B, T, H, W, 3) minus clip mean
    frames = einops.rearrange(video, 'b t h w c -> (b t) h w c')  # (B*T, H, W, 3)
    emb = self.clip.encode_image(frames)  # (B*T, D)
    return einops.rearrange(emb, '(b t) d -> b t d', b=b)

  def fuse(self, frames: Array) -> Array:
    """Temporal fusion (B, T, D) -> (B, D): mean over T or the temporal transformer."""
    if self.temporal is None:
      return jnp.mean(frames.astype(jnp.float32), axis=1)
    return self.temporal(frames)

  # ---------------------------------------------------------------- training
  def two_stream(self, v_c: Array, v_f: Array) -> tuple[Array, Array]:
    """FAS then ME on frame embeddings (training): (B,T,D) x2 -> (v_c^D, v_f^D)."""
    if self.fas is not None:
      v_c, v_f = self.fas.select_pair(v_c, v_f)
    if self.me is not None:
      v_c, v_f = self.me(v_c, v_f)
    return v_c, v_f

  def train_outputs(self, clean: Array, foggy: Array, text_emb: Array) -> dict[str, Array]:
    """Everything ``losses.fognet_loss`` needs for one batch.

    Args:
      clean, foggy: (B, T, H, W, 3) paired CLIP-normalised clips.
      text_emb: (C, D) class prompt embeddings (``encode_text`` of one prompt per class).

    Returns:
      dict with 'video_f' (B or 2B, D), 'video_c' (B, D) or None, 'frames_f' / 'frames_c'
      (B, T, D) (``v_f^D``, ``v_c^D``; None for the baseline), 'text' (C, D) and
      'logit_scale' (scalar, log scale).
    """
    if clean.shape != foggy.shape:
      raise ValueError(f'clean and foggy clips differ in shape: {clean.shape} vs {foggy.shape}')
    out = {
      'text': text_emb,
      'logit_scale': self.logit_scale,
      'video_c': None,
      'frames_f': None,
      'frames_c': None,
    }
    if self.arch == 'actionclip':
      video = {'foggy': foggy, 'clean': clean}.get(self.train_stream)
      if video is None:  # 'clean+foggy': one batch of 2B single-stream videos.
        video = jnp.concatenate([foggy, clean], axis=0)  # (2B, T, H, W, 3)
      out['video_f'] = self.fuse(self.encode_frames(video))
      return out
    # Both streams in one pass through the image tower, each pair's two clips side by side:
    # sample b's clips are rows 2b and 2b+1, so they stay on the device that holds sample b
    # (the batch axis is the one split over devices; joining the streams end to end would
    # move frames between devices).
    pairs = einops.rearrange(
      jnp.stack([clean, foggy], axis=1), 'b s t h w c -> (b s) t h w c'
    )  # (2B, T, H, W, 3)
    both = einops.rearrange(self.encode_frames(pairs), '(b s) t d -> b s t d', s=2)
    v_c, v_f = both[:, 0], both[:, 1]  # (B, T, D) each
    v_c_d, v_f_d = self.two_stream(v_c, v_f)
    out.update(video_f=self.fuse(v_f_d), video_c=self.fuse(v_c_d), frames_f=v_f_d, frames_c=v_c_d)
    return out

  # ---------------------------------------------------------------- inference
  def foggy_frames(self, foggy: Array) -> Array:
    """Inference path on the foggy clip alone: (B,T,H,W,3) -> v_f^D (B,T,D)."""
    v_f = self.encode_frames(foggy)
    if self.fas is not None:
      v_f = self.fas(v_f)  # FAS over the T foggy tokens
    if self.me is not None:
      v_f = self.me.infer(v_f)  # foggy stream is query, key and value
    return v_f

  def video_embedding(self, foggy: Array) -> Array:
    """(B, T, H, W, 3) foggy clips -> (B, D) float32 video embeddings (unnormalised)."""
    return self.fuse(self.foggy_frames(foggy))

  def predict(self, foggy: Array, text_emb: Array) -> Array:
    """Class probabilities of foggy clips (no clean clip is used or accepted).

    Args:
      foggy: (B, T, H, W, 3) CLIP-normalised foggy clips.
      text_emb: (C, D) class prompt embeddings, or (K, C, D) for K templates; with K
        templates the per-template class probabilities are averaged.

    Returns:
      (B, C) float32 probabilities.
    """
    logits = similarity_logits(self.video_embedding(foggy), text_emb, self.logit_scale)
    probs = jax.nn.softmax(logits, axis=-1)  # (B, C) or (B, K, C)
    return probs if probs.ndim == 2 else jnp.mean(probs, axis=1)
