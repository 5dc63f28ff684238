"""FogNet modules against NumPy code written from eqs. 1-5, foggy-only inference, the
Table 5a switch combinations (one loss step each), gradients, batch-order invariance."""

import inspect

import config_testutil
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fognet_jax import config_lib
from fognet_jax import losses
from fognet_jax import weights
from fognet_jax.models import blocks
from fognet_jax.models import clip

B, T, H, C = 4, 3, 32, 5
LABELS = np.array([1, 4, 1, 0], np.int32)
TINY = dict(
  image_size=32, patch_size=8, context_length=16, vocab_size=256, vision_layers=1, text_layers=1
)


def tiny_cfg(**changes):
  cfg = config_testutil.model_block()
  cfg.backbone = 'tiny'
  for k, v in TINY.items():
    cfg.clip_overrides[k] = v
  cfg.temporal_layers = 1
  cfg.fas.num_heads = 2
  for key, value in changes.items():
    block, _, leaf = key.rpartition('.')
    (cfg[block] if block else cfg)[leaf] = value
  if cfg.backbone == 'tiny-rn':  # ResNet tower: its block counts come from the preset
    cfg.clip_overrides.vision_layers = None
    cfg.clip_overrides.patch_size = None
  return cfg


def batch(seed=0):
  rng = np.random.default_rng(seed)
  clean = rng.normal(size=(B, T, H, H, 3)).astype(np.float32)
  foggy = (0.5 * clean + 0.5 * rng.normal(size=clean.shape)).astype(np.float32)
  tokens = rng.integers(1, 200, size=(C, TINY['context_length'])).astype(np.int32)
  tokens[:, 6] = 255  # end-of-text = largest id
  return jnp.asarray(clean), jnp.asarray(foggy), jnp.asarray(tokens)


# ------------------------------------------------------------------ NumPy references
def np_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def np_attention(q, k, v, heads):
  """softmax(Q K^T / sqrt(d)) V per head, plain loops over batch and heads."""
  bsz, n, d = q.shape
  dh = d // heads
  out = np.zeros((bsz, n, d))
  for b in range(bsz):
    for h in range(heads):
      sl = slice(h * dh, (h + 1) * dh)
      w = np_softmax(q[b, :, sl] @ k[b, :, sl].T / np.sqrt(dh))
      out[b, :, sl] = w @ v[b, :, sl]
  return out


def p(linear, name):
  return np.asarray(getattr(linear, name)[...], np.float64)


def np_fas(mod, x):
  x = np.asarray(x, np.float64)
  if mod.parameter_free:  # eq. 1 literally
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
      xn = x[b] / np.linalg.norm(x[b], axis=-1, keepdims=True)
      for i in range(x.shape[1]):
        w = np_softmax(np.array([xn[i] @ xn[j] for j in range(x.shape[1])]) / mod.temperature)
        out[b, i] = sum(w[j] * x[b, j] for j in range(x.shape[1]))
    return out
  lin = lambda m, h: h @ p(m, 'kernel') + p(m, 'bias')
  att = np_attention(lin(mod.q, x), lin(mod.k, x), lin(mod.v, x), mod.num_heads)
  return x + lin(mod.out, att)


def np_fas_channels(mod, v_c, v_f):
  """Eq. 1 over the T tokens [v_c,i ; v_f,i] (width 2D), eq. 2 splitting the channels."""
  v_c, v_f = np.asarray(v_c, np.float64), np.asarray(v_f, np.float64)
  bsz, t, d = v_c.shape
  if mod.parameter_free:
    cat = np.concatenate([v_c, v_f], axis=-1)
    out = np.zeros_like(cat)
    for b in range(bsz):
      for i in range(t):
        sims = [
          cat[b, i] @ cat[b, j] / np.linalg.norm(cat[b, i]) / np.linalg.norm(cat[b, j])
          for j in range(t)
        ]
        w = np_softmax(np.array(sims) / mod.temperature)
        out[b, i] = sum(w[j] * cat[b, j] for j in range(t))
    return out[..., :d], out[..., d:]
  lin = lambda m, h: h @ p(m, 'kernel') + p(m, 'bias')
  heads, dh = mod.num_heads, d // mod.num_heads
  q = {s: lin(mod.q, x) for s, x in (('c', v_c), ('f', v_f))}
  k = {s: lin(mod.k, x) for s, x in (('c', v_c), ('f', v_f))}
  v = {s: lin(mod.v, x) for s, x in (('c', v_c), ('f', v_f))}
  att = {'c': np.zeros_like(v_c), 'f': np.zeros_like(v_f)}
  for b in range(bsz):
    for h in range(heads):
      sl = slice(h * dh, (h + 1) * dh)
      # the mean of the two streams' scaled dot products
      logits = sum(q[s][b, :, sl] @ k[s][b, :, sl].T for s in 'cf') / (2 * np.sqrt(dh))
      w = np_softmax(logits)
      for s in 'cf':
        att[s][b, :, sl] = w @ v[s][b, :, sl]
  return v_c + lin(mod.out, att['c']), v_f + lin(mod.out, att['f'])


def np_cross(mod, x_q, x_kv):
  x_q, x_kv = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)
  return np_attention(
    x_q @ p(mod.wq, 'kernel'), x_kv @ p(mod.wk, 'kernel'), x_kv @ p(mod.wv, 'kernel'), mod.num_heads
  )


def np_me(mod, v_c, v_f):
  """Eqs. 3-5: v_f^D = Attn(Q_c, K_f, V_f) + v_f ; v_c^D = Attn(Q_f, K_c, V_c) + v_c."""
  to_clean = mod.to_foggy if mod.shared_weights else mod.to_clean
  return np_cross(to_clean, v_f, v_c) + v_c, np_cross(mod.to_foggy, v_c, v_f) + v_f


def randomize_biases(fas, rng):
  """Non-zero q/k/v/out biases (they start at zero), so that bias handling is exercised."""
  for lin in (fas.q, fas.k, fas.v, fas.out):
    lin.bias[...] = jnp.asarray(0.5 * rng.normal(size=lin.bias.shape), jnp.float32)


# ------------------------------------------------------------------ equation tests
@pytest.mark.parametrize('parameter_free', [False, True])
def test_fas_matches_numpy(parameter_free):
  mod = blocks.FogAwareSelection(
    16,
    parameter_free=parameter_free,
    num_heads=4,
    temperature=0.3,
    init_scale=1.0,
    concat='tokens',
    rngs=nnx.Rngs(0),
  )
  rng = np.random.default_rng(0)
  if not parameter_free:
    randomize_biases(mod, rng)
  v_c, v_f = rng.normal(size=(2, 3, 4, 16))
  a_c, a_f = mod.select_pair(jnp.asarray(v_c, jnp.float32), jnp.asarray(v_f, jnp.float32))
  ref = np_fas(mod, np.concatenate([v_c, v_f], axis=1))  # over the 2T tokens
  np.testing.assert_allclose(a_c, ref[:, :4], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a_f, ref[:, 4:], rtol=1e-4, atol=1e-5)
  # The streams really interact: changing the clean tokens changes the foggy output.
  _, a_f2 = mod.select_pair(jnp.asarray(v_c + 1.0, jnp.float32), jnp.asarray(v_f, jnp.float32))
  assert float(jnp.max(jnp.abs(a_f2 - a_f))) > 1e-3
  # Inference: the same module over the T foggy tokens only.
  np.testing.assert_allclose(
    mod(jnp.asarray(v_f, jnp.float32)), np_fas(mod, v_f), rtol=1e-4, atol=1e-5
  )


@pytest.mark.parametrize('parameter_free', [False, True])
def test_fas_channel_concat_matches_numpy(parameter_free):
  mod = blocks.FogAwareSelection(
    16,
    parameter_free=parameter_free,
    num_heads=4,
    temperature=0.3,
    init_scale=1.0,
    concat='channels',
    rngs=nnx.Rngs(0),
  )
  rng = np.random.default_rng(3)
  if not parameter_free:
    randomize_biases(mod, rng)
  v_c, v_f = rng.normal(size=(2, 3, 4, 16))
  a_c, a_f = mod.select_pair(jnp.asarray(v_c, jnp.float32), jnp.asarray(v_f, jnp.float32))
  ref_c, ref_f = np_fas_channels(mod, v_c, v_f)
  np.testing.assert_allclose(a_c, ref_c, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a_f, ref_f, rtol=1e-4, atol=1e-5)
  # The clean stream weighs the frames: changing it changes the foggy output ...
  _, a_f2 = mod.select_pair(
    jnp.asarray(v_c + rng.normal(size=v_c.shape), jnp.float32), jnp.asarray(v_f, jnp.float32)
  )
  assert float(jnp.max(jnp.abs(a_f2 - a_f))) > 1e-3
  # ... but mixes in no clean frame: with one repeated foggy frame, whatever the clean
  # frames, the foggy output is that frame's own (a weighted mean of copies of it).
  same = np.repeat(v_f[:, :1], 4, axis=1)
  _, a_same = mod.select_pair(jnp.asarray(v_c, jnp.float32), jnp.asarray(same, jnp.float32))
  _, a_same2 = mod.select_pair(jnp.asarray(-3 * v_c, jnp.float32), jnp.asarray(same, jnp.float32))
  np.testing.assert_allclose(a_same, a_same2, rtol=1e-5, atol=1e-5)
  # Inference is the same for both readings: attention over the T foggy tokens.
  tokens_mod = blocks.FogAwareSelection(
    16,
    parameter_free=parameter_free,
    num_heads=4,
    temperature=0.3,
    init_scale=1.0,
    concat='tokens',
    rngs=nnx.Rngs(0),
  )
  if not parameter_free:
    randomize_biases(tokens_mod, np.random.default_rng(3))
  np.testing.assert_allclose(
    mod(jnp.asarray(v_f, jnp.float32)),
    tokens_mod(jnp.asarray(v_f, jnp.float32)),
    rtol=1e-6,
    atol=1e-6,
  )
  with pytest.raises(ValueError, match='concat must be one of'):
    blocks.FogAwareSelection(16, concat='frames', rngs=nnx.Rngs(0))


@pytest.mark.parametrize('shared', [True, False])
@pytest.mark.parametrize('heads', [1, 2])
def test_me_matches_numpy_both_directions(shared, heads):
  mod = blocks.MutualEnhancement(
    16, shared_weights=shared, num_heads=heads, init_scale=1.0, rngs=nnx.Rngs(1)
  )
  rng = np.random.default_rng(1)
  v_c, v_f = rng.normal(size=(2, 3, 4, 16))
  d_c, d_f = mod(jnp.asarray(v_c, jnp.float32), jnp.asarray(v_f, jnp.float32))
  ref_c, ref_f = np_me(mod, v_c, v_f)
  np.testing.assert_allclose(d_f, ref_f, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(d_c, ref_c, rtol=1e-4, atol=1e-5)
  # Inference: foggy stream is query, key and value.
  np.testing.assert_allclose(
    mod.infer(jnp.asarray(v_f, jnp.float32)),
    np_cross(mod.to_foggy, v_f, v_f) + v_f,
    rtol=1e-4,
    atol=1e-5,
  )
  n_sets = len([m for m in (mod.to_foggy, mod.to_clean) if m is not None])
  assert n_sets == (1 if shared else 2)


def _grad_fn(graphdef, loss_cfg, model_cfg):
  """(params, rest, batch...) -> ((loss, metrics), d loss / d params); ``rest`` holds the
  non-trainable state (e.g. the frozen batch-norm statistics of a ResNet tower)."""

  @jax.jit
  def loss_and_grad(params, rest, clean, foggy, tokens, labels):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest)
      text = model.encode_text(tokens)
      out = model.train_outputs(clean, foggy, text)
      return losses.fognet_loss(out, labels, loss_cfg, model_cfg)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  return loss_and_grad


@pytest.fixture(scope='module')
def default_model():
  cfg = tiny_cfg(**{'fas.init_scale': 1.0, 'me.init_scale': 1.0, 'me.shared_weights': False})
  model = weights.create_model(cfg, rngs=nnx.Rngs(0))
  randomize_biases(model.fas, np.random.default_rng(9))
  return cfg, model


def test_train_outputs_and_predict_match_numpy_pipeline(default_model):
  cfg, model = default_model
  clean, foggy, tokens = batch()
  out = model.train_outputs(clean, foggy, model.encode_text(tokens))
  v_c = np.asarray(model.encode_frames(clean), np.float64)
  v_f = np.asarray(model.encode_frames(foggy), np.float64)
  assert model.fas.concat == 'channels'  # the default reading of eq. 1
  a_c, a_f = np_fas_channels(model.fas, v_c, v_f)
  ref_c, ref_f = np_me(model.me, a_c, a_f)
  np.testing.assert_allclose(out['frames_f'], ref_f, rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(out['frames_c'], ref_c, rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(out['video_f'], ref_f.mean(1), rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(out['video_c'], ref_c.mean(1), rtol=2e-3, atol=2e-4)

  # predict: foggy-only FAS + ME, mean over T, per-template probabilities averaged.
  text_k = jnp.stack([model.encode_text(tokens), model.encode_text(tokens[::-1])])  # (2, C, D)
  inf = np_cross(model.me.to_foggy, np_fas(model.fas, v_f), np_fas(model.fas, v_f))
  video = (inf + np_fas(model.fas, v_f)).mean(1)
  scale = min(np.exp(float(model.logit_scale)), 100.0)
  norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  probs = np.mean(
    [np_softmax(scale * norm(video) @ norm(np.asarray(t, np.float64)).T) for t in text_k], axis=0
  )
  np.testing.assert_allclose(model.predict(foggy, text_k), probs, rtol=2e-3, atol=1e-5)
  np.testing.assert_allclose(model.predict(foggy, text_k[0]).sum(-1), np.ones(B), rtol=1e-5)


def _all_shapes(jaxpr, acc):
  for eqn in jaxpr.eqns:
    acc.extend(tuple(getattr(v.aval, 'shape', ())) for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          _all_shapes(inner, acc)
  return acc


def test_predict_takes_foggy_clips_only(default_model):
  cfg, model = default_model
  assert list(inspect.signature(model.predict).parameters) == ['foggy', 'text_emb']
  _, foggy, tokens = batch()
  text = model.encode_text(tokens)
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s, x, t: nnx.merge(graphdef, s).predict(x, t))(state, foggy, text)
  in_shapes = [tuple(v.aval.shape) for v in jaxpr.jaxpr.invars]
  assert in_shapes.count(foggy.shape) == 1 and sum(len(s) == 5 for s in in_shapes) == 1
  shapes = _all_shapes(jaxpr.jaxpr, [])
  d = model.clip.config.embed_dim
  # No clean stand-in anywhere: no doubled clip / frame batch, no 2T token set.
  for bad in [
    (2 * B, T, H, H, 3),
    (B, 2 * T, H, H, 3),
    (2 * B * T, H, H, 3),
    (B, 2 * T, d),
    (2 * B, T, d),
  ]:
    assert bad not in shapes, bad
  assert (B * T, d) in shapes  # the image tower ran on the B*T foggy frames
  # Clean-direction ME weights play no part at inference.
  before = model.predict(foggy, text)
  kernel = model.me.to_clean.wq.kernel
  kernel[...] = kernel[...] + 1.0
  np.testing.assert_array_equal(model.predict(foggy, text), before)
  kernel[...] = kernel[...] - 1.0


# Table 5a rows (+ the single-stream variants of Table 5b and the non-default switches).
COMBOS = {
  'baseline_actionclip': dict(arch='actionclip'),
  'baseline_transf_clean+foggy': dict(
    arch='actionclip', temporal_fusion='transformer', train_stream='clean+foggy'
  ),
  'fognet_none': {'fas.enabled': False, 'me.enabled': False, 'csa.enabled': False},
  'fas': {'me.enabled': False, 'csa.enabled': False},
  'me': {'fas.enabled': False, 'csa.enabled': False},
  'csa': {'fas.enabled': False, 'me.enabled': False},
  'fas+me': {'csa.enabled': False},
  'fas+me+csa': {},
  'param_free_fas+separate_me+transf+bf16': {
    'fas.parameter_free': True,
    'me.shared_weights': False,
    'temporal_fusion': 'transformer',
    'dtype': 'bfloat16',
  },
  'fognet_resnet_tower': {'backbone': 'tiny-rn'},  # Table 5d's RN50 row, in small
  'fas_tokens+me+csa': {'fas.concat': 'tokens'},
}


@pytest.mark.parametrize('name', list(COMBOS))
def test_switch_combination_one_loss_step(name):
  cfg = tiny_cfg(**COMBOS[name])
  model = weights.create_model(cfg, rngs=nnx.Rngs(0))
  if cfg.backbone == 'tiny-rn':
    # OpenAI's init zeroes every block's last batch-norm scale (each block starts as the
    # identity), which leaves the block's other weights without gradient at step 0.
    for stage in model.clip.visual.layers:
      for block in stage:
        block.bn3.scale[...] = jnp.full_like(block.bn3.scale[...], 0.5)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  step = _grad_fn(graphdef, config_testutil.loss_block(), cfg)
  clean, foggy, tokens = batch()

  def loss_grad(params):
    return step(params, rest, clean, foggy, tokens, LABELS)

  (loss, metrics), grads = loss_grad(params)
  assert {'loss', 'loss_f', 'loss_c', 'loss_temp'} <= set(metrics)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))  # fp32 also with bf16 towers
  two = cfg.arch == 'fognet'
  assert (float(metrics['loss_c']) > 0) == two
  assert (float(metrics['loss_temp']) > 0) == (two and cfg.csa.enabled)
  # Every trainable parameter gets a finite, non-zero gradient.
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(leaves) == len(jax.tree.leaves(params))
  for path, g in leaves:
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f'no gradient reaches {jax.tree_util.keystr(path)}'
  # Module presence follows the switches.
  assert (model.fas is not None) == (two and cfg.fas.enabled)
  assert (model.me is not None) == (two and cfg.me.enabled)
  # One normalised gradient step lowers the loss.
  gnorm = global_norm(grads)
  new = jax.tree.map(lambda p_, g_: p_ - 1e-3 * g_ / gnorm, params, grads)
  (loss2, _), _ = loss_grad(new)
  assert float(loss2) < float(loss)


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_loss_invariant_to_batch_order(default_model):
  cfg, model = default_model
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  step = _grad_fn(graphdef, config_testutil.loss_block(), cfg)
  clean, foggy, tokens = batch(1)
  perm = np.array([2, 0, 3, 1])
  (_, m), _ = step(params, rest, clean, foggy, tokens, LABELS)
  (_, m_p), _ = step(params, rest, clean[perm], foggy[perm], tokens, LABELS[perm])
  for key in ('loss', 'loss_f', 'loss_c', 'loss_temp'):
    np.testing.assert_allclose(m_p[key], m[key], rtol=1e-5, err_msg=key)


def test_config_errors_name_the_key():
  with pytest.raises(ValueError, match='model.arch'):
    config_lib.validate_model(tiny_cfg(arch='x3d'))
  with pytest.raises(ValueError, match='model.fas.num_heads'):
    weights.create_model(tiny_cfg(**{'fas.num_heads': 5}), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='model.temporal_fusion'):
    config_lib.validate_model(tiny_cfg(temporal_fusion='lstm'))
  with pytest.raises(
    ValueError,
    match=r'model\.clip_overrides .* cannot be combined with '
    r"model\.init_from='/nonexistent'",
  ):
    config_lib.validate_model(tiny_cfg(init_from='/nonexistent'))
  # Without overrides, a missing checkpoint is reported as such.
  cfg = config_testutil.model_block()
  cfg.backbone, cfg.init_from = 'tiny', '/nonexistent'
  assert weights.clip_overrides(cfg) == {}
  with pytest.raises(FileNotFoundError, match=r'^/nonexistent: no such checkpoint'):
    weights.create_model(cfg, rngs=nnx.Rngs(0))
  cfg = tiny_cfg(temporal_fusion='transformer', max_frames=2)
  model = weights.create_model(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='max_frames=2'):
    model.predict(batch()[1], jnp.ones((C, model.clip.config.embed_dim)))


def test_model_cost_tool_prints_one_json_line(tmp_path, default_model):
  import json
  import os
  import subprocess
  import sys

  cfg, model = default_model
  cfg_file = tmp_path / 'cost_config.py'
  cfg_file.write_text(
    'import json\nimport ml_collections\n\n\ndef get_config():\n'
    '  c = ml_collections.ConfigDict()\n'
    f'  c.model = ml_collections.ConfigDict(json.loads({cfg.to_json()!r}))\n'
    '  return c\n'
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='',
    PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fognet_jax.tools.model_cost',
      f'--config={cfg_file}',
      f'--frames={T}',
      f'--image_size={H}',
      '--num_classes=3',
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=root,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result['params_trainable'] == clip.count_params(model)
  assert result['params_heads'] == sum(clip.count_params(m) for m in (model.fas, model.me))
  # Against a count written out from the architecture (not from the nnx.Param leaves).
  clip_cfg = model.clip.config
  d = clip_cfg.embed_dim
  heads = 4 * (d * d + d) + 2 * 3 * d * d  # FAS: q, k, v, out with biases; ME: 2 bias-free sets
  assert result['params_heads'] == heads == 10 * 1024 + 128
  assert result['params_trainable'] == analytic_clip_params(clip_cfg) + heads
  # XLA counts a multiply-add as 2 flops: the hand count of the image tower's computed
  # multiply-adds, doubled, is close to (and below) XLA's total for the whole inference.
  ratio = result['gflops_inference'] / (2 * result['gmacs_vision_computed'])
  assert 1.0 <= ratio < 1.3, result
  # The model's count (every layer for every token) is larger by the skipped last-layer work.
  assert result['gmacs_vision_computed'] < result['gmacs_vision_analytic']
  assert result['input'] == [1, T, H, H, 3]


def analytic_clip_params(c):
  """Parameters of a ViT CLIP from its config, counted by hand."""

  def blocks(width, layers):
    mlp = 4 * width
    per = 4 * (width * width + width) + 2 * 2 * width + (width * mlp + mlp) + (mlp * width + width)
    return layers * per

  w, g = c.vision_width, c.image_size // c.patch_size
  vision = (
    3 * c.patch_size**2 * w
    + w
    + (g * g + 1) * w
    + 2 * w
    + blocks(w, c.vision_layers)
    + 2 * w
    + w * c.embed_dim
  )
  t = c.text_width
  text = (
    c.vocab_size * t + c.context_length * t + blocks(t, c.text_layers) + 2 * t + t * c.embed_dim
  )
  return vision + text + 1  # + logit_scale


def test_analytic_clip_count_matches_transformers_b16():
  from fognet_jax.models import clip

  # transformers' CLIPModel(ViT-B/16): 149,620,737 parameters.
  assert analytic_clip_params(clip.CONFIGS['ViT-B/16']) == 149_620_737


@pytest.mark.parametrize('stream', ['foggy', 'clean', 'clean+foggy'])
def test_baseline_trains_on_its_train_stream(stream):
  """arch='actionclip': the one stream is the configured one; 'clean+foggy' stacks both
  (2B videos) and the loss tiles the labels."""
  cfg = tiny_cfg(arch='actionclip', train_stream=stream)
  model = weights.create_model(cfg, rngs=nnx.Rngs(0))
  clean, foggy, tokens = batch(2)
  text = model.encode_text(tokens)
  out = model.train_outputs(clean, foggy, text)
  assert out['video_c'] is None and out['frames_f'] is None and out['frames_c'] is None

  def video(x):  # mean over T of the image tower's frame embeddings
    frames = np.asarray(model.clip.encode_image(x.reshape((B * T,) + x.shape[2:])))
    return frames.reshape(B, T, -1).mean(1)

  v_f, v_c = video(foggy), video(clean)
  assert np.abs(v_f - v_c).max() > 1e-2  # the streams are distinguishable
  got = np.asarray(out['video_f'])
  if stream == 'clean+foggy':
    assert got.shape[0] == 2 * B
    halves = [got[:B], got[B:]]
    order = [v_f, v_c] if np.allclose(halves[0], v_f, rtol=1e-4, atol=1e-5) else [v_c, v_f]
    for h, ref in zip(halves, order):
      np.testing.assert_allclose(h, ref, rtol=1e-4, atol=1e-5)
    vids, labels = np.concatenate(order), np.tile(LABELS, 2)
  else:
    np.testing.assert_allclose(got, v_f if stream == 'foggy' else v_c, rtol=1e-4, atol=1e-5)
    vids, labels = (v_f if stream == 'foggy' else v_c), LABELS
  # The loss against NumPy: eqs. 8-9 on these videos with (tiled) labels.
  total, m = losses.fognet_loss(out, LABELS, config_testutil.loss_block(), cfg)
  scale = min(np.exp(float(model.logit_scale)), 100.0)
  norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  s = scale * norm(np.asarray(vids, np.float64)) @ norm(np.asarray(text, np.float64)).T
  same = labels[:, None] == labels[None, :]
  log_v2t = (s - np.log(np.exp(s).sum(1, keepdims=True)))[np.arange(len(labels)), labels]
  log_t2v = (s - np.log(np.exp(s).sum(0, keepdims=True)))[np.arange(len(labels)), labels]
  ref = -np.mean((same @ (log_v2t + log_t2v)) / same.sum(1))
  np.testing.assert_allclose(total, ref, rtol=1e-4)
  assert float(m['loss_c']) == 0.0 and float(m['loss_temp']) == 0.0


def test_bf16_heads_run_bf16_matmuls():
  """model.dtype='bfloat16': FAS, ME and the temporal transformer multiply in bf16 (and
  the towers, see test_clip); 'float32': nothing does."""
  from test_clip import matmul_dtypes

  clean, foggy, tokens = batch()
  rng = np.random.default_rng(0)
  v_c, v_f = (jnp.asarray(rng.normal(size=(B, T, 32)), jnp.float32) for _ in range(2))
  for dtype in ('bfloat16', 'float32'):
    model = weights.create_model(
      tiny_cfg(dtype=dtype, temporal_fusion='transformer'), rngs=nnx.Rngs(0)
    )
    text = model.encode_text(tokens)
    heads = matmul_dtypes(model, 'two_stream', v_c, v_f)
    fuse = matmul_dtypes(model, 'fuse', v_f)
    assert len(heads) >= 4 + 2 * 3  # FAS q, k, v, out; ME Wq, Wk, Wv in both directions
    assert len(fuse) >= 6 * len(model.temporal.transformer.resblocks)
    everything = matmul_dtypes(model, 'train_outputs', clean, foggy, text)
    for ops in (heads, fuse, everything):
      wrong = [op for op in ops if set(op[1]) != {dtype}]
      assert not wrong, (dtype, wrong)


def test_frame_centering_cancels_a_static_background():
  """With model.frame_centering, adding the same image to every frame of a clip (a static
  background) leaves predictions unchanged; without it, they change."""
  clean, foggy, tokens = batch(3)
  background = jax.random.normal(jax.random.key(7), (B, 1, H, H, 3))
  for centering in (True, False):
    model = weights.create_model(tiny_cfg(frame_centering=centering), rngs=nnx.Rngs(0))
    text = model.encode_text(tokens)
    p0 = np.asarray(model.predict(foggy, text))
    p1 = np.asarray(model.predict(foggy + background, text))
    if centering:
      np.testing.assert_allclose(p0, p1, rtol=1e-5, atol=1e-6)
    else:
      assert np.abs(p0 - p1).max() > 1e-3


# ------------------------------------------------------------------ bf16: each weight cast once
def _bf16_casts_per_param(jaxpr, num_params):
  """How many times each parameter (an input of `jaxpr`) is converted to bfloat16, following
  it through reshapes, slices and concatenations, and into nested jaxprs (remat, pjit)."""
  counts = [0] * num_params
  moves = {
    'concatenate',
    'reshape',
    'broadcast_in_dim',
    'squeeze',
    'transpose',
    'slice',
    'dynamic_slice',
    'copy',
    'copy_p',
  }

  def walk(jx, origin):  # origin: var -> set of parameter indices it is made of
    for e in jx.eqns:
      src = set().union(
        *[origin.get(v, set()) for v in e.invars if not isinstance(v, jax.extend.core.Literal)]
      )
      if e.primitive.name == 'convert_element_type' and e.params['new_dtype'] == jnp.bfloat16:
        for i in src:
          counts[i] += 1
      if e.primitive.name in moves and src:
        for o in e.outvars:
          origin[o] = src
      for name in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
        sub = e.params.get(name)
        if sub is not None:
          sub = getattr(sub, 'jaxpr', sub)
          walk(
            sub,
            {
              iv: origin[ov]
              for iv, ov in zip(sub.invars, e.invars)
              if not isinstance(ov, jax.extend.core.Literal) and ov in origin
            },
          )

  walk(jaxpr.jaxpr, {v: {i} for i, v in enumerate(jaxpr.jaxpr.invars)})
  return counts


def test_bf16_step_casts_each_clip_weight_matrix_once():
  """Both streams go through the towers in one pass: every CLIP weight matrix is cast to
  bfloat16 once in the training gradient (XLA keeps that one copy for the backward pass)."""
  model = weights.create_model(tiny_cfg(dtype='bfloat16'), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  clean, foggy, tokens = batch()

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    out = m.train_outputs(clean, foggy, m.encode_text(tokens))
    return sum(jnp.sum(v.astype(jnp.float32)) for v in jax.tree.leaves(out))

  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  counts = _bf16_casts_per_param(jax.make_jaxpr(jax.grad(loss))(params), len(flat))
  tower = {
    jax.tree_util.keystr(path): n
    for (path, leaf), n in zip(flat, counts)
    if leaf.ndim >= 2
    and "'clip'" in jax.tree_util.keystr(path)
    and 'embedding' not in jax.tree_util.keystr(path)
  }  # embeddings stay float32
  assert len(tower) >= 10 and set(tower.values()) == {1}, tower


def test_residual_dtype_reaches_the_towers_built_and_loaded(tmp_path):
  from fognet_jax import clip_weights  # pylint: disable=g-import-not-at-top

  built = weights.create_model(
    tiny_cfg(dtype='bfloat16'), rngs=nnx.Rngs(0), residual_dtype='bfloat16'
  )
  path = str(tmp_path / 'tiny')
  clip_weights.save(clip.create('tiny', seed=0), path)
  cfg = tiny_cfg(dtype='bfloat16', init_from=path)
  for k in TINY:  # the loaded weights carry their config
    cfg.clip_overrides[k] = None
  loaded = weights.create_model(cfg, rngs=nnx.Rngs(0), residual_dtype='bfloat16')
  default = weights.create_model(tiny_cfg(dtype='bfloat16'), rngs=nnx.Rngs(0))
  for model, want in ((built, jnp.bfloat16), (loaded, jnp.bfloat16), (default, jnp.float32)):
    assert model.clip.visual.residual_dtype == want and model.clip.text.residual_dtype == want
