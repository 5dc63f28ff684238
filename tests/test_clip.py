"""Tests of the Flax CLIP model (shapes, dtype, remat, interpolation, parameter count)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fognet_jax.models import clip


def _tokens(n, length=77, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.zeros((n, length), np.int32)
  for i in range(n):
    k = rng.integers(1, length - 1)
    ids[i, 0] = 49406
    ids[i, 1:k] = rng.integers(1, 49406, k - 1)
    ids[i, k] = 49407
  return jnp.asarray(ids)


def test_tiny_shapes_and_logits():
  model = clip.create('tiny', seed=0)
  pixels = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  tokens = _tokens(2)
  img = model.encode_image(pixels)
  txt = model.encode_text(tokens)
  assert img.shape == (3, 32) and txt.shape == (2, 32)
  assert img.dtype == jnp.float32 and txt.dtype == jnp.float32
  per_image, per_text = model(pixels, tokens)
  assert per_image.shape == (3, 2) and per_text.shape == (2, 3)
  img_n = img / np.linalg.norm(img, axis=-1, keepdims=True)
  txt_n = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
  np.testing.assert_allclose(per_image, np.exp(np.log(1 / 0.07)) * img_n @ txt_n.T, rtol=1e-5)
  np.testing.assert_allclose(per_text, per_image.T)


def test_bf16_remat_close_to_fp32_and_grads():
  fp32 = clip.create('tiny', seed=1)
  bf16 = clip.create('tiny', seed=1, dtype=jnp.bfloat16, remat=True)
  pixels = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  a, b = fp32.encode_image(pixels), bf16.encode_image(pixels)
  assert b.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) < 3e-2
  # Params stay float32, gradients flow through the rematerialised blocks.
  grads = nnx.grad(lambda m: jnp.sum(m.encode_image(pixels) ** 2))(bf16)
  leaves = jax.tree.leaves(nnx.state(grads))
  assert all(g.dtype == jnp.float32 for g in leaves)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  ref = nnx.grad(lambda m: jnp.sum(m.encode_image(pixels) ** 2))(
      clip.create('tiny', seed=1, remat=True))
  ref_plain = nnx.grad(lambda m: jnp.sum(m.encode_image(pixels) ** 2))(fp32)
  for x, y in zip(jax.tree.leaves(nnx.state(ref)), jax.tree.leaves(nnx.state(ref_plain))):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_config_overrides_and_errors():
  model = clip.create('tiny', image_size=64)
  assert model.visual.positional_embedding.shape == (65, 64)
  with pytest.raises(ValueError, match='image_sise'):
    clip.create('tiny', image_sise=64)
  with pytest.raises(ValueError, match='Unknown CLIP config'):
    clip.create('ViT-Q/3')
  with pytest.raises(ValueError, match='vision_heads'):
    clip.get_config('tiny', vision_heads=5)


def test_param_count_b16_matches_transformers():
  # transformers' CLIPModel(ViT-B/16) counts 149,620,737 parameters (position_ids are
  # buffers; logit_scale is a parameter).
  abstract = nnx.eval_shape(lambda: clip.CLIP(clip.CONFIGS['ViT-B/16'], rngs=nnx.Rngs(0)))
  assert clip.count_params(abstract) == 149_620_737


def test_bicubic_matrix_matches_numpy_reference():
  # Independent check: torch-style bicubic (a=-0.75, align_corners=False) written per pixel.
  def ref(in_size, out_size):
    a = -0.75
    def w(x):
      x = abs(x)
      if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
      if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
      return 0.0
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
      src = (i + 0.5) * in_size / out_size - 0.5
      f = int(np.floor(src))
      for j in range(f - 1, f + 3):
        m[i, min(max(j, 0), in_size - 1)] += w(src - j)
    return m
  for n_in, n_out in [(4, 6), (7, 4), (14, 16), (5, 5)]:
    np.testing.assert_allclose(clip.bicubic_matrix(n_in, n_out), ref(n_in, n_out), atol=1e-6)
  np.testing.assert_allclose(clip.bicubic_matrix(5, 5), np.eye(5), atol=1e-6)


def test_pos_embed_interpolation():
  model = clip.create('tiny', seed=2)
  pos = model.visual.positional_embedding[...]
  # Same grid: unchanged.
  assert clip.interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
  out = clip.interpolate_pos_embed(pos, (4, 4), (6, 8))
  assert out.shape == (1 + 48, 64)
  np.testing.assert_array_equal(out[0], pos[0])
  # A constant embedding stays constant (the interpolation weights sum to 1).
  const = jnp.ones_like(pos)
  np.testing.assert_allclose(clip.interpolate_pos_embed(const, (4, 4), (6, 3)), 1.0, atol=1e-6)
  # The model accepts other resolutions.
  img = model.encode_image(jnp.zeros((1, 48, 64, 3)))
  assert img.shape == (1, 32) and bool(jnp.all(jnp.isfinite(img)))


def test_attention_impl_option():
  with pytest.raises(ValueError, match='attention_impl'):
    clip.create('tiny', attention_impl='flash')
  pixels = jax.random.normal(jax.random.key(4), (1, 32, 32, 3))
  a = clip.create('tiny', seed=3).encode_image(pixels)
  b = clip.create('tiny', seed=3, attention_impl='xla').encode_image(pixels)
  np.testing.assert_array_equal(a, b)
