"""Pixels to model input on the accelerator: uint8 frames, per-sample colour, CLIP normalisation.

With ``config.perf.pixels_on_device`` (the default) the input pipeline decodes, samples,
crops, resizes and flips on the host and sends uint8 frames, plus, for training pairs, one
``(COLOR_STEPS, 3, 4)`` float32 array per pair: the drawn colour jitter, grayscale and CLIP
normalisation as a chain of per-pixel affine maps of the RGB vector. The train and eval
steps turn them into the model's float input here, inside the jitted step, in one
elementwise pass. This moves the per-pixel float work off the host's cores (the larger part
of a training pair's host time) and sends a quarter of the bytes to the device.

Every colour operation of ``augment.apply_color`` is affine in RGB: brightness ``b x``,
contrast ``c x + (1 - c) / 2`` (mid-grey pivot), saturation ``s x + (1 - s) g(x)`` with
``g`` the grey value, hue a rotation in YIQ, grayscale ``g(x)`` in all three channels. Row
``k < 4`` of the array is ``[A | b]`` of the k-th jitter operation, followed by a clip to
[0, 1]; the last row composes grayscale and normalisation, with no clip. The host's
``augment.color_affines`` builds the rows; ``augment.apply_color`` + ``augment.normalize``
are the reference they match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fognet_jax.models import clip as clip_lib

COLOR_STEPS = 5  # four jitter operations (clipped) and grayscale + normalisation (not)


def _affine(x: jax.Array, m: jax.Array) -> jax.Array:
  """Per-sample RGB affine map: x (B, ..., 3), m (B, 3, 4) = [A | b] -> A x + b."""
  m = m.reshape(m.shape[:1] + (1,) * (x.ndim - 2) + m.shape[1:])  # (B, 1.., 3, 4)
  # Written as three multiply-adds, not a dot with a contraction of 3, so XLA fuses the whole
  # chain into one elementwise pass.
  return x[..., 0:1] * m[..., 0] + x[..., 1:2] * m[..., 1] + x[..., 2:3] * m[..., 2] + m[..., 3]


def normalize(frames: jax.Array) -> jax.Array:
  """CLIP normalisation of uint8 frames (any shape ending in 3) to float32."""
  mean = jnp.asarray(clip_lib.IMAGE_MEAN, jnp.float32)
  std = jnp.asarray(clip_lib.IMAGE_STD, jnp.float32)
  return (frames.astype(jnp.float32) * jnp.float32(1 / 255) - mean) / std


def apply_color(frames: jax.Array, color: jax.Array) -> jax.Array:
  """uint8 frames (B, ..., 3) and per-sample affine chains (B, COLOR_STEPS, 3, 4) -> float32."""
  if color.shape[1:] != (COLOR_STEPS, 3, 4) or color.shape[0] != frames.shape[0]:
    raise ValueError(
      f'color must be ({frames.shape[0]}, {COLOR_STEPS}, 3, 4) for frames of '
      f'shape {frames.shape}, got {color.shape}'
    )
  x = frames.astype(jnp.float32) * jnp.float32(1 / 255)
  for k in range(COLOR_STEPS - 1):
    x = jnp.clip(_affine(x, color[:, k]), 0.0, 1.0)
  return _affine(x, color[:, COLOR_STEPS - 1])


def model_input(frames: jax.Array) -> jax.Array:
  """Model input of a batch of frames: uint8 is normalised here, floats pass unchanged."""
  if frames.dtype == jnp.uint8:
    return normalize(frames)
  return frames


def train_inputs(batch) -> tuple[jax.Array, jax.Array]:
  """(clean, foggy) model inputs of a training batch (see the module docstring).

  A batch with 'color' holds uint8 frames and the per-pair colour chains; one without holds
  uint8 frames without colour jitter, or float frames already normalised on the host.
  """
  if 'color' in batch:
    return apply_color(batch['clean'], batch['color']), apply_color(batch['foggy'], batch['color'])
  return model_input(batch['clean']), model_input(batch['foggy'])


def identity_chain() -> np.ndarray:
  """(COLOR_STEPS, 3, 4) chain of no colour change, then CLIP normalisation (host side)."""
  out = np.zeros((COLOR_STEPS, 3, 4), np.float32)
  out[:, :, :3] = np.eye(3, dtype=np.float32)
  std = np.asarray(clip_lib.IMAGE_STD, np.float32)
  mean = np.asarray(clip_lib.IMAGE_MEAN, np.float32)
  out[-1, :, :3] = np.diag(1 / std)
  out[-1, :, 3] = -mean / std
  return out
