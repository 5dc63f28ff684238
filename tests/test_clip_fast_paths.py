"""The CLIP towers' fast paths compute what the plain paths compute.

* `clip.Linear` (leading dims merged into one 2-D matmul) equals `nnx.Linear`;
* `MultiHeadAttention` (q/k/v as one matmul, head-major attention) equals an independent
  NumPy multi-head attention, causal and not;
* the pooled last layer (`Transformer(pool_at=...)`: query, output projection and MLP of the
  class / end-of-text token only) equals the full last layer read at that token, in values
  and gradients, with and without remat;
* `prompts.trim_context` (positions after the last end-of-text token dropped) leaves every
  text embedding unchanged;
* the attention scale applied to the queries as they are projected gives bit-identical
  values and gradients to scaling the logits (head widths of a power of 4);
* the cuDNN path's padding and masking (run with XLA's kernel here) equals unpadded attention.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fognet_jax import prompts
from fognet_jax import tokenizer as tokenizer_lib
from fognet_jax.models import clip
from fognet_jax.models.clip import multihead


def _np_attention(x, wq, bq, wk, bk, wv, bv, wo, bo, heads, causal):
  """Multi-head self-attention in float64 NumPy: x (N, L, W)."""
  x = x.astype(np.float64)
  n, length, width = x.shape
  d = width // heads
  split = lambda t: t.reshape(n, length, heads, d).transpose(0, 2, 1, 3)  # (N, H, L, d)
  q, k, v = split(x @ wq + bq), split(x @ wk + bk), split(x @ wv + bv)
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
  if causal:
    logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = (w @ v).transpose(0, 2, 1, 3).reshape(n, length, width)
  return out @ wo + bo


def test_linear_equals_nnx_linear_on_3d_inputs():
  lin = clip.Linear(6, 5, rngs=nnx.Rngs(0))
  ref = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 4, 6))
  np.testing.assert_allclose(lin(x), ref(x), rtol=1e-6, atol=1e-6)
  assert lin(x).shape == (3, 4, 5)
  assert lin(x[0, 0]).shape == (5,)


@pytest.mark.parametrize('causal', [False, True])
def test_attention_equals_numpy_with_random_biases(causal):
  width, heads = 16, 4
  mha = clip.MultiHeadAttention(
    width, heads, dtype=jnp.float32, rngs=nnx.Rngs(0), in_std=0.3, out_std=0.3
  )
  keys = jax.random.split(jax.random.key(2), 4)
  for proj, key in zip((mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj), keys):
    proj.bias[...] = 0.5 * jax.random.normal(key, (width,))
  x = np.asarray(jax.random.normal(jax.random.key(3), (2, 7, width)))
  p = lambda m: (np.asarray(m.kernel[...], np.float64), np.asarray(m.bias[...], np.float64))
  ref = _np_attention(
    x, *p(mha.q_proj), *p(mha.k_proj), *p(mha.v_proj), *p(mha.out_proj), heads, causal
  )
  out = mha(jnp.asarray(x), causal=causal)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # The row path reads the same attention at one position per sequence.
  rows = jnp.asarray([6, 2])
  row_out = mha.attend_row(jnp.asarray(x), rows, causal=causal)
  np.testing.assert_allclose(row_out, ref[np.arange(2), [6, 2]], rtol=1e-5, atol=1e-5)


def _mha_scaling_the_logits(mha, x, causal):
  """`MultiHeadAttention` as it was when the logits, not the queries, carried the scale."""
  n, length, width = x.shape
  projs = (mha.q_proj, mha.k_proj, mha.v_proj)
  kernel = jnp.concatenate([p.kernel[...] for p in projs], axis=1)
  bias = jnp.concatenate([p.bias[...] for p in projs])
  y = x.reshape(n * length, width) @ kernel + bias
  y = y.reshape(n, length, 3, mha.heads, width // mha.heads).transpose(2, 0, 3, 1, 4)
  out = clip.attention(y[0], y[1], y[2], causal=causal)  # scales the logits
  return mha.out_proj(out.transpose(0, 2, 1, 3).reshape(n, length, width))


@pytest.mark.parametrize('width,heads', [(64, 4), (128, 2)])  # head widths 16 and 64
@pytest.mark.parametrize('causal', [False, True])
def test_queries_carrying_the_scale_are_bit_identical(width, heads, causal):
  mha = clip.MultiHeadAttention(
    width, heads, dtype=jnp.float32, rngs=nnx.Rngs(0), in_std=0.5, out_std=0.3
  )
  for i, proj in enumerate((mha.q_proj, mha.k_proj, mha.v_proj)):
    proj.bias[...] = 0.5 * jax.random.normal(jax.random.key(10 + i), (width,))
  x = jax.random.normal(jax.random.key(3), (2, 9, width))
  g = jax.random.normal(jax.random.key(4), (2, 9, width))
  graphdef, params = nnx.split(mha)

  def loss(fn):
    return lambda p: jnp.sum(fn(nnx.merge(graphdef, p), x) * g)

  ours = jax.jit(jax.value_and_grad(loss(lambda m, x: m(x, causal=causal))))(params)
  ref = jax.jit(jax.value_and_grad(loss(lambda m, x: _mha_scaling_the_logits(m, x, causal))))(
    params
  )
  np.testing.assert_array_equal(ours[0], ref[0])
  for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(ours[1]['q_proj']['kernel'][...]).max()) > 0


def _full_image(model, x):
  v = model.visual
  return v.ln_post(v.tokens(x)[:, 0]) @ v.proj[...]


def _full_text(model, ids):
  t = model.text
  eot = jnp.argmax(ids, axis=-1)
  feats = jnp.take_along_axis(t.tokens(ids), eot[:, None, None], axis=1)[:, 0]
  return feats @ t.text_projection[...]


# A small vocabulary keeps the token-embedding gradient cheap; the end-of-text token is the
# largest id, as in CLIP's BPE.
_VOCAB = 512


def _ids(rng, eot_positions, length=77):
  ids = rng.integers(1, 400, size=(len(eot_positions), length))
  for row, pos in enumerate(eot_positions):
    ids[row, pos] = _VOCAB - 1
  return jnp.asarray(ids, jnp.int32)


@pytest.mark.parametrize('remat', [False, True])
def test_pooled_last_layer_equals_full_last_layer(remat):
  model = clip.create('tiny', seed=0, remat=remat, vocab_size=_VOCAB)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 32, 32, 3)).astype(np.float32))
  ids = _ids(rng, [5, 76, 0, 30])

  def fast_fn(m):
    return jnp.concatenate([m.encode_image(x), m.encode_text(ids)])  # (7, D)

  def full_fn(m):
    return jnp.concatenate([_full_image(m, x), _full_text(m, ids)])

  np.testing.assert_allclose(nnx.jit(fast_fn)(model), nnx.jit(full_fn)(model), rtol=1e-5, atol=1e-5)

  def grad(fn):
    return nnx.jit(nnx.grad(lambda m: jnp.sum(jnp.sin(fn(m)))))(model)

  fast, full = grad(fast_fn), grad(full_fn)
  flat_fast, flat_full = jax.tree.leaves(fast), jax.tree.leaves(full)
  assert len(flat_fast) == len(flat_full) > 10
  for a, b in zip(flat_fast, flat_full):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
  # The last block's weights get gradients through the pooled rows.
  blocks = fast.visual.transformer.resblocks
  last = blocks[len(model.visual.transformer.resblocks) - 1].mlp.c_fc.kernel[...]
  assert float(jnp.max(jnp.abs(last))) > 0


def test_trim_context_keeps_text_embeddings():
  tok = tokenizer_lib.get_tokenizer('byte')
  model = clip.create('tiny', seed=1, vocab_size=tok.vocab_size)
  full = prompts.tokenize_classes(['walk', 'sidestep to the left'], tok)  # (K, C, 77)
  trimmed = prompts.trim_context(full)
  assert trimmed.shape[:2] == full.shape[:2]
  assert trimmed.shape[-1] < full.shape[-1]
  # Nothing but trailing positions after every prompt's end-of-text token was cut.
  eot = np.argmax(full, axis=-1)
  assert trimmed.shape[-1] == eot.max() + 1
  k, c, _ = full.shape
  encode = nnx.jit(lambda m, ids: m.encode_text(ids))
  a = encode(model, jnp.asarray(full.reshape(k * c, -1)))
  b = encode(model, jnp.asarray(trimmed.reshape(k * c, -1)))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # A prompt whose end-of-text token is last keeps the whole context.
  ids = np.ones((2, 9), np.int32)
  ids[1, 8] = 5
  assert prompts.trim_context(ids).shape == (2, 9)


def test_trim_context_rejects_empty_prompts():
  with pytest.raises(ValueError, match='at least one position'):
    prompts.trim_context(np.zeros((2, 0), np.int32))


@pytest.mark.parametrize('length,causal', [(197, False), (77, True), (128, False)])
def test_cudnn_padding_and_masking_equal_unpadded(length, causal):
  keys = jax.random.split(jax.random.key(4), 3)
  q, k, v = (jax.random.normal(key, (2, 3, length, 8)) for key in keys)  # (N, H, L, d)
  ref = clip.attention(q, k, v, causal=causal)
  padded = multihead._cudnn_attention(q, k, v, causal=causal, implementation='xla')
  assert padded.shape == ref.shape
  np.testing.assert_allclose(padded, ref, rtol=1e-5, atol=1e-5)
  # Queries scaled already, as MultiHeadAttention gives them: no second scaling.
  prescaled = multihead._cudnn_attention(
    q * 8**-0.5, k, v, causal=causal, implementation='xla', scale=1.0
  )
  np.testing.assert_allclose(prescaled, ref, rtol=1e-5, atol=1e-5)
