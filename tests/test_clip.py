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
  # bf16 keeps 8 mantissa bits (relative rounding 2**-9 = 2e-3 per operation): the towers'
  # outputs move by about 5e-3 here. fp32 arithmetic would agree to ~1e-7, so the lower
  # bound fails when the towers silently compute in float32.
  rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
  assert 5e-4 < rel < 3e-2
  # Params stay float32, gradients flow through the rematerialised blocks.
  grads = nnx.grad(lambda m: jnp.sum(m.encode_image(pixels) ** 2))(bf16)
  leaves = jax.tree.leaves(nnx.state(grads))
  assert all(g.dtype == jnp.float32 for g in leaves)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  ref = nnx.grad(lambda m: jnp.sum(m.encode_image(pixels) ** 2))(
    clip.create('tiny', seed=1, remat=True)
  )
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


def test_bf16_residual_stream():
  """residual_dtype=bfloat16: the stream between the blocks is bfloat16 (the towers still
  return float32); outputs and gradients stay near the float32-stream ones."""
  with pytest.raises(ValueError, match='residual_dtype'):
    clip.create('tiny', residual_dtype=jnp.bfloat16)  # float32 compute
  pixels = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  tokens = _tokens(2)
  fp32 = clip.create('tiny', seed=1)
  bf16 = clip.create('tiny', seed=1, dtype=jnp.bfloat16)
  res16 = clip.create('tiny', seed=1, dtype=jnp.bfloat16, residual_dtype='bfloat16')
  same = clip.create('tiny', seed=1, dtype=jnp.bfloat16, residual_dtype='float32')
  np.testing.assert_array_equal(same.encode_image(pixels), bf16.encode_image(pixels))
  for model, want in ((bf16, jnp.float32), (res16, jnp.bfloat16)):
    assert model.visual.transformer(model.visual._embed(pixels)).dtype == want
    assert model.text.transformer(model.text._embed(tokens), causal=True).dtype == want
  assert res16.visual.tokens(pixels).dtype == jnp.float32
  for method, arg in (('encode_image', pixels), ('encode_text', tokens)):
    ref, a, b = (getattr(m, method)(arg) for m in (fp32, bf16, res16))
    assert b.dtype == jnp.float32
    rel_a = float(jnp.max(jnp.abs(ref - a)) / jnp.max(jnp.abs(ref)))
    rel_b = float(jnp.max(jnp.abs(ref - b)) / jnp.max(jnp.abs(ref)))
    assert not np.array_equal(a, b)  # the stream really is rounded
    assert rel_b < max(4 * rel_a, 1e-2), (method, rel_a, rel_b)

  def grads(m):
    g = nnx.grad(lambda m: jnp.sum(m.encode_image(pixels) ** 2) + jnp.sum(m.encode_text(tokens)))(m)
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(nnx.state(g))])

  ga, gb = grads(bf16), grads(res16)
  assert gb.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(gb)))
  cosine = float(ga @ gb / (jnp.linalg.norm(ga) * jnp.linalg.norm(gb)))
  assert cosine > 0.999, cosine


def test_attention_impl_option():
  with pytest.raises(ValueError, match='attention_impl'):
    clip.create('tiny', attention_impl='flash')
  pixels = jax.random.normal(jax.random.key(4), (1, 32, 32, 3))
  a = clip.create('tiny', seed=3).encode_image(pixels)
  b = clip.create('tiny', seed=3, attention_impl='xla').encode_image(pixels)
  np.testing.assert_array_equal(a, b)
  # Both choices against attention written out in NumPy (random biases, causal or not).
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 5, 16))
  for impl in (None, 'xla'):
    mha = clip.MultiHeadAttention(
      16, 4, dtype=jnp.float32, rngs=nnx.Rngs(7), in_std=0.5, out_std=0.5, attention_impl=impl
    )
    for lin in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj):
      lin.bias[...] = jnp.asarray(rng.normal(size=16), jnp.float32)
    w = {
      n: (
        np.asarray(getattr(mha, n).kernel[...], np.float64),
        np.asarray(getattr(mha, n).bias[...], np.float64),
      )
      for n in ('q_proj', 'k_proj', 'v_proj', 'out_proj')
    }
    lin = lambda h, n: h @ w[n][0] + w[n][1]
    q, k, v = lin(x, 'q_proj'), lin(x, 'k_proj'), lin(x, 'v_proj')
    for causal in (False, True):
      heads = np.zeros_like(x)
      for bi in range(2):
        for h in range(4):
          sl = slice(4 * h, 4 * h + 4)
          s = q[bi, :, sl] @ k[bi, :, sl].T / 2.0  # sqrt(head_dim = 4)
          if causal:
            s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
          p = np.exp(s - s.max(-1, keepdims=True))
          heads[bi, :, sl] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, sl]
      got = mha(jnp.asarray(x, jnp.float32), causal=causal)
      np.testing.assert_allclose(
        got, lin(heads, 'out_proj'), rtol=1e-4, atol=1e-5, err_msg=f'{impl} causal={causal}'
      )


def matmul_dtypes(module, method, *args):
  """(primitive, operand dtypes) of every dot_general / convolution that `module.method(*args)`
  traces to, nested jaxprs (remat, jit, custom_jvp) included."""
  graphdef, state = nnx.split(module)
  jaxpr = jax.make_jaxpr(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a))(state, *args)
  found = []

  def walk(j):
    for eqn in j.eqns:
      if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
        found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else [param]:
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns'):
            walk(inner)

  walk(jaxpr.jaxpr)
  return found


@pytest.mark.parametrize('name', ['tiny', 'tiny-rn'])
def test_bf16_dtype_really_runs_bf16_matmuls(name):
  """dtype=bfloat16: every matmul and convolution of both towers takes bf16 operands;
  float32: none does."""
  size = clip.CONFIGS[name].image_size
  pixels = jnp.zeros((2, size, size, 3))
  tokens = _tokens(2)
  counts = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    # (remat on the ViT's bf16 run only: tracing the remat ResNet blocks is slow)
    model = clip.create(
      name, seed=0, dtype=dtype, remat=dtype == jnp.bfloat16 and not clip.CONFIGS[name].is_resnet
    )
    calls = [('encode_image', pixels)]
    if not clip.CONFIGS[name].is_resnet:  # the same text tower: traced once, for the ViT
      calls.append(('encode_text', tokens))
    for method, arg in calls:
      ops = matmul_dtypes(model, method, arg)
      want = 'bfloat16' if dtype == jnp.bfloat16 else 'float32'
      wrong = [op for op in ops if set(op[1]) != {want}]
      assert not wrong, (name, method, want, wrong)
      counts.setdefault(method, []).append(len(ops))
  cfg = clip.CONFIGS[name]
  if not cfg.is_resnet:
    # At least q, k, v, out, two MLP matmuls per text block and the projection.
    assert counts['encode_text'][0] >= 6 * cfg.text_layers + 1
    assert counts['encode_text'][0] == counts['encode_text'][1]
  if cfg.is_resnet:  # 3 stem convolutions + 3 per bottleneck (+ downsample) + attn pool
    assert counts['encode_image'][0] >= 3 + 3 * sum(cfg.vision_layers) + 4
  else:
    assert counts['encode_image'][0] >= 1 + 6 * cfg.vision_layers + 1
  assert counts['encode_image'][0] == counts['encode_image'][1]
