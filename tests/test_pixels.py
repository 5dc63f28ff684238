"""fognet_jax/pixels.py: the colour chain on the device against augment's per-operation NumPy code
(`augment.color_and_normalize`: one operation at a time in [0, 1], then CLIP normalisation)."""

import itertools

import numpy as np
import pytest

from fognet_jax import augment
from fognet_jax import pixels
from fognet_jax.models import clip


def _frames(seed, n=1):
  return np.random.default_rng(seed).integers(0, 256, (n, 3, 5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('order', list(itertools.permutations(range(4))))
def test_every_operation_order(order):
  # strong factors so that the clips between operations bite
  cj = augment.ColorJitter(
    True, brightness=1.6, contrast=0.4, saturation=1.8, hue=0.21, order=order, grayscale=False
  )
  x = _frames(sum(o * 4**i for i, o in enumerate(order)))
  got = np.asarray(pixels.apply_color(x, augment.color_affines(cj)[None]))
  np.testing.assert_allclose(got, augment.color_and_normalize(x[0], cj)[None], atol=1e-5)


@pytest.mark.parametrize(
  'op, kw',
  [
    (0, dict(brightness=0.6)),
    (0, dict(brightness=1.4)),
    (1, dict(contrast=0.6)),
    (1, dict(contrast=1.4)),
    (2, dict(saturation=0.0)),
    (2, dict(saturation=1.2)),
    (3, dict(hue=-0.1)),
    (3, dict(hue=0.5)),
  ],
)
def test_each_operation_alone_and_with_grayscale(op, kw):
  for gray in (False, True):
    order = (op,) + tuple(o for o in range(4) if o != op)
    cj = augment.ColorJitter(True, order=order, grayscale=gray, **kw)  # the others: identity
    x = _frames(op)
    got = np.asarray(pixels.apply_color(x, augment.color_affines(cj)[None]))
    np.testing.assert_allclose(got, augment.color_and_normalize(x[0], cj)[None], atol=1e-5)


def test_per_sample_chains_and_identity():
  """Each sample of a batch gets its own chain; no jitter is plain CLIP normalisation."""
  rng = np.random.default_rng(0)
  aug = type(
    'A',
    (),
    dict(
      color_jitter_prob=0.5,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      grayscale_prob=0.5,
    ),
  )
  cjs = [augment.sample_color_jitter(rng, aug) for _ in range(8)]
  x = _frames(7, n=8)
  got = np.asarray(pixels.apply_color(x, np.stack([augment.color_affines(c) for c in cjs])))
  for i, cj in enumerate(cjs):
    np.testing.assert_allclose(got[i], augment.color_and_normalize(x[i], cj), atol=1e-5)
  plain = np.asarray(pixels.apply_color(x, np.stack([pixels.identity_chain()] * 8)))
  want = (x / 255 - np.asarray(clip.IMAGE_MEAN)) / np.asarray(clip.IMAGE_STD)
  np.testing.assert_allclose(plain, want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(pixels.normalize(x)), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(pixels.model_input(x)), want, atol=1e-5)
  floats = want.astype(np.float32)
  assert pixels.model_input(floats) is floats


def test_train_inputs_without_color_and_bad_shapes():
  x = _frames(1, n=2)
  clean, foggy = pixels.train_inputs({'clean': x, 'foggy': x[::-1]})
  np.testing.assert_allclose(np.asarray(foggy), np.asarray(pixels.normalize(x[::-1])))
  np.testing.assert_allclose(np.asarray(clean), np.asarray(pixels.normalize(x)))
  with pytest.raises(ValueError, match='color must be'):
    pixels.apply_color(x, np.zeros((2, 4, 3, 4), np.float32))
  with pytest.raises(ValueError, match='color must be'):
    pixels.apply_color(x, np.zeros((3, pixels.COLOR_STEPS, 3, 4), np.float32))
