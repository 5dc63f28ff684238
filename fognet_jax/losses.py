"""FogNet training losses: multi-positive video-text InfoNCE (eqs. 8-10), the
cross-stream temporal alignment loss (eqs. 6-7) and their weighted sum (eq. 11).

``loss.kind`` picks the video-text term: 'fognet' (eqs. 8-10 below, the default) or
'actionclip_kl' (ActionCLIP's loss, ``actionclip_kl_loss``: the train step then draws one
prompt per sample and the text embeddings are (B, D), one per video).

All losses are computed in float32 whatever dtype the towers ran in: every input is
cast to fp32 first, embeddings are L2-normalised in fp32 and every softmax is written
as ``logit - logsumexp`` (numerically stable).

The paper writes eqs. 7-9 as log-likelihoods (to be maximised); the functions here
return the *negative* of those expressions, i.e. quantities to minimise.

Multi-positive InfoNCE, as in eqs. 8-9 of the paper. For a batch of B videos with
labels ``y`` and C class prompts, ``s[k, c] = scale * cos(video_k, text_c)``,
``k_b = {k : y_k == y_b}``:

* V2T (eq. 9):  ``-(1/B) sum_b (1/|k_b|) sum_{k in k_b} log softmax_c(s[k, :])[y_b]``
  -- softmax over the C class prompts.
* T2V (eq. 8):  ``-(1/B) sum_b (1/|k_b|) sum_{k in k_b} log softmax_j(s[:, y_b])[k]``
  -- softmax over the B videos of the batch, for the column of class ``c* = y_b``.

The denominators of T2V include the other positives of the same class (they are part of
``sum_j``), exactly as eq. 8 is written. (Because every term of the inner sum only
depends on ``k`` and ``y_k = y_b``, both expressions equal a plain average over the B
videos; the implementation nevertheless follows the equations literally with a
same-class mask, and the tests compare against a loop over ``b`` and ``k in k_b``.)
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections

# The scaled cosine of the forward pass (FogNet.predict), shared with the losses.
from fognet_jax.models.blocks import l2_normalize
from fognet_jax.models.fognet import similarity_logits

Array = jax.Array


def _same_class_mean(per_video: Array, labels: Array) -> Array:
  """``(1/B) sum_b (1/|k_b|) sum_{k in k_b} per_video[k]`` (the outer sums of eqs. 8-9)."""
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)  # (B, B) row b = k_b
  per_b = (same @ per_video) / jnp.sum(same, axis=1)  # (B,)
  return jnp.mean(per_b)


def video_to_text_loss(logits: Array, labels: Array) -> Array:
  """Eq. 9, negated: multi-positive InfoNCE, softmax over the C class prompts.

  Args:
    logits: (B, C) ``s[k, c]`` (already scaled).
    labels: (B,) int class of each video.
  """
  logits = jnp.asarray(logits, jnp.float32)
  log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # (B, C)
  log_p_true = jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]  # (B,)
  return -_same_class_mean(log_p_true, labels)


def text_to_video_loss(logits: Array, labels: Array) -> Array:
  """Eq. 8, negated: multi-positive InfoNCE, softmax over the B videos of the batch.

  For video ``k`` of class ``c* = y_k`` the term is
  ``log exp(s[k, c*]) / sum_j exp(s[j, c*])`` (column ``c*`` normalised over the batch).

  Args:
    logits: (B, C) ``s[k, c]`` (already scaled).
    labels: (B,) int class of each video.
  """
  logits = jnp.asarray(logits, jnp.float32)
  log_p = logits - jax.nn.logsumexp(logits, axis=0, keepdims=True)  # (B, C) over videos
  log_p_true = jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]  # (B,)
  return -_same_class_mean(log_p_true, labels)


def video_text_loss(
  video: Array, text: Array, logit_scale: Array, labels: Array, max_logit_scale: float = 100.0
) -> tuple[Array, dict[str, Array]]:
  """Eq. 10 (negated): ``L = L^T2V + L^V2T`` for one stream.

  Returns:
    (loss, {'t2v': ..., 'v2t': ..., 'accuracy': top-1 of the V2T logits}).
  """
  logits = similarity_logits(video, text, logit_scale, max_logit_scale)
  t2v = text_to_video_loss(logits, labels)
  v2t = video_to_text_loss(logits, labels)
  acc = jnp.mean((jnp.argmax(logits, axis=1) == labels).astype(jnp.float32))
  return t2v + v2t, {'t2v': t2v, 'v2t': v2t, 'accuracy': acc}


def _kl_to_target(logits: Array, target: Array) -> Array:
  """Mean over rows of KL(target_row || softmax(logits_row)), with 0 log 0 = 0."""
  log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  safe = jnp.where(target > 0, target, 1.0)
  return jnp.mean(jnp.sum(jnp.where(target > 0, target * (jnp.log(safe) - log_p), 0.0), axis=1))


def actionclip_kl_loss(
  video: Array, text: Array, logit_scale: Array, labels: Array, max_logit_scale: float = 100.0
) -> tuple[Array, dict[str, Array]]:
  """ActionCLIP's loss (its ``KLLoss`` with ``gen_label``), per-sample prompts.

  ``s[i, j] = scale * cos(video_i, text_j)`` over the B videos and the B prompts of the batch
  (prompt j is a template drawn for sample j's class). The target ``G[i, j] = [y_i == y_j]``
  is row-normalised; V2T = mean_i KL(G_i || softmax_j s[i, :]), T2V the same on ``s.T``;
  the loss is their mean. (ActionCLIP's code softmaxes ``10 * G`` instead of normalising
  its rows: every off-label entry then gets a mass of about e^-10 / |k_i|.)

  Returns:
    (loss, {'t2v', 'v2t', 'accuracy': label of the most similar prompt == own label}).
  """
  labels = jnp.asarray(labels, jnp.int32)
  if text.ndim != 2 or text.shape[0] != video.shape[0]:
    raise ValueError(
      f'actionclip_kl_loss needs one prompt embedding per video, got video '
      f'{video.shape} and text {text.shape}'
    )
  logits = similarity_logits(video, text, logit_scale, max_logit_scale)  # (B, B)
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  target = same / jnp.sum(same, axis=1, keepdims=True)
  v2t = _kl_to_target(logits, target)
  t2v = _kl_to_target(logits.T, target)
  acc = jnp.mean((labels[jnp.argmax(logits, axis=1)] == labels).astype(jnp.float32))
  return 0.5 * (v2t + t2v), {'t2v': t2v, 'v2t': v2t, 'accuracy': acc}


VIDEO_TEXT_LOSSES = {'fognet': video_text_loss, 'actionclip_kl': actionclip_kl_loss}


def temporal_alignment_loss(frames_f: Array, frames_c: Array, temperature: float) -> Array:
  """Eqs. 6-7 (negated), averaged over the batch.

  ``s[i, j] = cos(frames_f[i], frames_c[j]) / temperature`` over frames ``i, j`` of one
  video, ``L_temp = -(1/T) sum_i log softmax_j(s[i, :])[i]``: the foggy frame ``i``
  has to pick the clean frame ``i`` among the T clean frames of the same video.

  Args:
    frames_f: (B, T, D) foggy frame embeddings ``v_f^D``.
    frames_c: (B, T, D) clean frame embeddings ``v_c^D``.
    temperature: τ > 0.
  """
  if frames_f.shape != frames_c.shape:
    raise ValueError(
      f'foggy and clean frame embeddings differ in shape: {frames_f.shape} vs {frames_c.shape}'
    )
  f = l2_normalize(frames_f)
  c = l2_normalize(frames_c)
  s = jnp.einsum('bid,bjd->bij', f, c) / temperature  # (B, T, T)
  log_p = s - jax.nn.logsumexp(s, axis=2, keepdims=True)
  diag = jnp.diagonal(log_p, axis1=1, axis2=2)  # (B, T)
  return -jnp.mean(diag)


def _tile_labels(labels: Array, n: int, what: str) -> Array:
  """Labels for ``n`` videos; ``n`` may be a multiple of the batch (stacked streams)."""
  b = labels.shape[0]
  if n == b:
    return labels
  if n % b:
    raise ValueError(f'{what} has {n} videos but there are {b} labels')
  return jnp.tile(labels, n // b)


def fognet_loss(
  outputs: Mapping[str, Any],
  labels: Array,
  loss_cfg: ml_collections.ConfigDict,
  model_cfg: ml_collections.ConfigDict,
) -> tuple[Array, dict[str, Array]]:
  """Eq. 11: ``L_all = L_f + λ L_c + β L_temp`` (float32), with every term reported.

  Args:
    outputs: the dict of ``FogNet.train_outputs``: 'video_f' (B', D), optionally
      'video_c' (B, D), 'frames_f'/'frames_c' (B, T, D) when the cross-stream alignment
      is on, 'text' (C, D), 'logit_scale' (scalar). ``B' = B`` or ``2B`` (the single-stream
      baseline trained on 'clean+foggy' stacks both streams into one batch).
    labels: (B,) int32 class indices.
    loss_cfg: the ``loss`` block of the config (configs/fogact.py documents its keys).
    model_cfg: the ``model`` block (decides which terms are active; CSA is on only for
      ``arch='fognet'`` with ``csa.enabled``).

  Returns:
    (total loss, metrics) with metrics keys 'loss', 'loss_f', 'loss_c', 'loss_temp'
    (0 when the term is off), 'loss_f_t2v', 'loss_f_v2t', 'loss_c_t2v', 'loss_c_v2t',
    'accuracy_f', 'accuracy_c', 'logit_scale' (= exp, clipped).
  """
  labels = jnp.asarray(labels, jnp.int32)
  max_scale = float(loss_cfg.max_logit_scale)
  kind = loss_cfg.get('kind', 'fognet')
  term = VIDEO_TEXT_LOSSES[kind]
  text = outputs['text']
  logit_scale = outputs['logit_scale']
  zero = jnp.zeros((), jnp.float32)

  video_f = outputs['video_f']
  text_f = text
  if kind == 'actionclip_kl' and video_f.shape[0] != text.shape[0]:
    # 'clean+foggy' stacks both streams: the two videos of a pair share the sample's prompt
    text_f = jnp.tile(text, (video_f.shape[0] // text.shape[0], 1))
  loss_f, parts_f = term(
    video_f,
    text_f,
    logit_scale,
    _tile_labels(labels, video_f.shape[0], "outputs['video_f']"),
    max_scale,
  )
  metrics = {
    'loss_f': loss_f,
    'loss_f_t2v': parts_f['t2v'],
    'loss_f_v2t': parts_f['v2t'],
    'accuracy_f': parts_f['accuracy'],
  }

  if outputs.get('video_c') is not None:
    loss_c, parts_c = term(outputs['video_c'], text, logit_scale, labels, max_scale)
    metrics.update(
      loss_c_t2v=parts_c['t2v'], loss_c_v2t=parts_c['v2t'], accuracy_c=parts_c['accuracy']
    )
  else:
    loss_c = zero
    metrics.update(loss_c_t2v=zero, loss_c_v2t=zero, accuracy_c=zero)
  metrics['loss_c'] = loss_c

  use_temp = model_cfg.arch == 'fognet' and bool(model_cfg.csa.enabled)
  if use_temp:
    if outputs.get('frames_f') is None or outputs.get('frames_c') is None:
      raise ValueError(
        'model.csa.enabled is set but the model outputs have no '
        "'frames_f'/'frames_c' (were they made with a different model config?)"
      )
    loss_temp = temporal_alignment_loss(
      outputs['frames_f'], outputs['frames_c'], float(loss_cfg.temp_temperature)
    )
  else:
    loss_temp = zero
  metrics['loss_temp'] = loss_temp

  total = loss_f + float(loss_cfg.lambda_clean) * loss_c + float(loss_cfg.beta_temp) * loss_temp
  metrics['loss'] = total
  metrics['logit_scale'] = jnp.minimum(jnp.exp(jnp.asarray(logit_scale, jnp.float32)), max_scale)
  return total, metrics


# (outputs, labels) -> (scalar loss, dict of scalar metrics): what the train step minimises.
LossFn = Callable[[Any, Array], tuple[Array, Mapping[str, Array]]]


def make_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
  """Eq. 11 with the config's loss weights and the model's active terms."""
  return functools.partial(fognet_loss, loss_cfg=config.loss, model_cfg=config.model)
