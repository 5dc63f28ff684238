"""Losses (eqs. 6-11) against independent NumPy code written from the paper's formulas."""

import config_testutil
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fognet_jax import losses


def _np_normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_logits(video, text, logit_scale):
  return min(np.exp(logit_scale), 100.0) * _np_normalize(video) @ _np_normalize(text).T


def _np_t2v(s, labels):
  """Eq. 8 negated, loops over b and k in k_b."""
  bsz = s.shape[0]
  total = 0.0
  for b in range(bsz):
    c_star = labels[b]
    k_b = [k for k in range(bsz) if labels[k] == labels[b]]
    inner = 0.0
    for k in k_b:
      inner += s[k, c_star] - np.log(sum(np.exp(s[j, c_star]) for j in range(bsz)))
    total += inner / len(k_b)
  return -total / bsz


def _np_v2t(s, labels):
  """Eq. 9 negated, loops over b and k in k_b."""
  bsz, ncls = s.shape
  total = 0.0
  for b in range(bsz):
    c_star = labels[b]
    k_b = [k for k in range(bsz) if labels[k] == labels[b]]
    inner = 0.0
    for k in k_b:
      inner += s[k, c_star] - np.log(sum(np.exp(s[k, c]) for c in range(ncls)))
    total += inner / len(k_b)
  return -total / bsz


def _np_temp(frames_f, frames_c, tau):
  """Eqs. 6-7 negated, per video, then mean over the batch."""
  out = []
  for f, c in zip(frames_f, frames_c):
    s = _np_normalize(f) @ _np_normalize(c).T / tau  # (T, T)
    t = s.shape[0]
    out.append(-sum(s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(t)) / t)
  return np.mean(out)


LABELS = np.array([2, 0, 2, 1, 2, 0], np.int32)  # repeated classes; class 3 absent


@pytest.fixture
def emb():
  rng = np.random.default_rng(0)
  return dict(
    video=rng.normal(size=(6, 8)),
    video_c=rng.normal(size=(6, 8)),
    text=rng.normal(size=(4, 8)),
    frames_f=rng.normal(size=(6, 5, 8)),
    frames_c=rng.normal(size=(6, 5, 8)),
    logit_scale=np.log(1 / 0.07),
  )


def test_t2v_v2t_match_numpy_with_repeated_classes(emb):
  s = _np_logits(emb['video'], emb['text'], emb['logit_scale'])
  logits = losses.similarity_logits(
    jnp.asarray(emb['video'], jnp.float32),
    jnp.asarray(emb['text'], jnp.float32),
    emb['logit_scale'],
  )
  np.testing.assert_allclose(logits, s, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(
    losses.text_to_video_loss(logits, LABELS), _np_t2v(s, LABELS), rtol=1e-5
  )
  np.testing.assert_allclose(
    losses.video_to_text_loss(logits, LABELS), _np_v2t(s, LABELS), rtol=1e-5
  )
  # The two directions really differ (softmax over videos vs over classes).
  assert abs(_np_t2v(s, LABELS) - _np_v2t(s, LABELS)) > 1e-3


def test_temporal_alignment_matches_numpy(emb):
  for tau in (1.0, 0.07):
    got = losses.temporal_alignment_loss(
      jnp.asarray(emb['frames_f'], jnp.float32), jnp.asarray(emb['frames_c'], jnp.float32), tau
    )
    np.testing.assert_allclose(got, _np_temp(emb['frames_f'], emb['frames_c'], tau), rtol=1e-5)


def test_temporal_alignment_is_minimal_for_aligned_frames():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(2, 6, 16))
  aligned = losses.temporal_alignment_loss(jnp.asarray(f), jnp.asarray(f), 0.07)
  shuffled = losses.temporal_alignment_loss(jnp.asarray(f), jnp.asarray(f[:, ::-1]), 0.07)
  assert float(aligned) < 0.05 < float(shuffled)


def _outputs(emb):
  return {
    'video_f': jnp.asarray(emb['video'], jnp.float32),
    'video_c': jnp.asarray(emb['video_c'], jnp.float32),
    'frames_f': jnp.asarray(emb['frames_f'], jnp.float32),
    'frames_c': jnp.asarray(emb['frames_c'], jnp.float32),
    'text': jnp.asarray(emb['text'], jnp.float32),
    'logit_scale': jnp.asarray(emb['logit_scale'], jnp.float32),
  }


def test_eq11_total_and_terms(emb):
  loss_cfg = config_testutil.loss_block()
  loss_cfg.lambda_clean, loss_cfg.beta_temp, loss_cfg.temp_temperature = 0.4, 0.1, 0.5
  model_cfg = config_testutil.model_block()
  total, m = losses.fognet_loss(_outputs(emb), LABELS, loss_cfg, model_cfg)
  s_f = _np_logits(emb['video'], emb['text'], emb['logit_scale'])
  s_c = _np_logits(emb['video_c'], emb['text'], emb['logit_scale'])
  l_f = _np_t2v(s_f, LABELS) + _np_v2t(s_f, LABELS)
  l_c = _np_t2v(s_c, LABELS) + _np_v2t(s_c, LABELS)
  l_t = _np_temp(emb['frames_f'], emb['frames_c'], 0.5)
  np.testing.assert_allclose(m['loss_f'], l_f, rtol=1e-5)
  np.testing.assert_allclose(m['loss_c'], l_c, rtol=1e-5)
  np.testing.assert_allclose(m['loss_temp'], l_t, rtol=1e-5)
  np.testing.assert_allclose(total, l_f + 0.4 * l_c + 0.1 * l_t, rtol=1e-5)
  np.testing.assert_allclose(m['loss'], total)
  np.testing.assert_allclose(m['loss_f_t2v'] + m['loss_f_v2t'], m['loss_f'], rtol=1e-6)
  assert total.dtype == jnp.float32

  # CSA off: L_temp reported as 0 and left out of the total.
  model_cfg.csa.enabled = False
  total_no_csa, m2 = losses.fognet_loss(_outputs(emb), LABELS, loss_cfg, model_cfg)
  assert float(m2['loss_temp']) == 0.0
  np.testing.assert_allclose(total_no_csa, l_f + 0.4 * l_c, rtol=1e-5)


def test_single_stream_baseline_and_stacked_streams(emb):
  loss_cfg = config_testutil.loss_block()
  model_cfg = config_testutil.model_block()
  model_cfg.arch = 'actionclip'
  out = _outputs(emb)
  out.update(video_c=None, frames_f=None, frames_c=None)
  total, m = losses.fognet_loss(out, LABELS, loss_cfg, model_cfg)
  s_f = _np_logits(emb['video'], emb['text'], emb['logit_scale'])
  np.testing.assert_allclose(total, _np_t2v(s_f, LABELS) + _np_v2t(s_f, LABELS), rtol=1e-5)
  assert float(m['loss_c']) == 0.0 and float(m['loss_temp']) == 0.0
  # 'clean+foggy' baseline: 2B videos, labels tiled.
  out['video_f'] = jnp.concatenate([out['video_f'], jnp.asarray(emb['video_c'], jnp.float32)])
  total2, _ = losses.fognet_loss(out, LABELS, loss_cfg, model_cfg)
  s2 = _np_logits(np.concatenate([emb['video'], emb['video_c']]), emb['text'], emb['logit_scale'])
  labels2 = np.tile(LABELS, 2)
  np.testing.assert_allclose(total2, _np_t2v(s2, labels2) + _np_v2t(s2, labels2), rtol=1e-5)


def test_losses_invariant_to_batch_order(emb):
  perm = np.random.default_rng(3).permutation(len(LABELS))
  out = _outputs(emb)
  out_p = {k: (v[perm] if v.ndim >= 2 and k != 'text' else v) for k, v in out.items()}
  cfgs = (config_testutil.loss_block(), config_testutil.model_block())
  _, m = losses.fognet_loss(out, LABELS, *cfgs)
  _, m_p = losses.fognet_loss(out_p, LABELS[perm], *cfgs)
  for key in ('loss', 'loss_f', 'loss_c', 'loss_temp', 'loss_f_t2v', 'loss_c_v2t'):
    np.testing.assert_allclose(m_p[key], m[key], rtol=1e-5, err_msg=key)


def test_fp32_and_stable_with_bf16_inputs_and_huge_logits(emb):
  out = {k: (v.astype(jnp.bfloat16) if k != 'logit_scale' else v) for k, v in _outputs(emb).items()}
  total, m = losses.fognet_loss(
    out, LABELS, config_testutil.loss_block(), config_testutil.model_block()
  )
  assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in m.values())
  assert np.isfinite(float(total))
  huge = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)) * 1e4, jnp.float32)
  for fn in (losses.text_to_video_loss, losses.video_to_text_loss):
    assert np.isfinite(float(fn(huge, LABELS)))


def test_logit_scale_is_clipped(emb):
  big = losses.similarity_logits(jnp.asarray(emb['video']), jnp.asarray(emb['text']), 10.0)
  assert float(jnp.max(jnp.abs(big))) <= 100.0 + 1e-4


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='shape'):
    losses.temporal_alignment_loss(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4, 4)), 0.1)
  out = {'video_f': jnp.ones((5, 4)), 'text': jnp.ones((3, 4)), 'logit_scale': 0.0}
  model_cfg = ml_collections.ConfigDict(config_testutil.model_block().to_dict())
  model_cfg.csa.enabled = False
  with pytest.raises(ValueError, match='video_f'):
    losses.fognet_loss(out, np.zeros(2, np.int32), config_testutil.loss_block(), model_cfg)
  model_cfg.csa.enabled = True
  out['video_f'] = jnp.ones((2, 4))
  with pytest.raises(ValueError, match='csa'):
    losses.fognet_loss(out, np.zeros(2, np.int32), config_testutil.loss_block(), model_cfg)


def _np_total(emb, lam, beta, tau, max_scale, logit_scale):
  def logits(video):
    return min(np.exp(logit_scale), max_scale) * _np_normalize(video) @ _np_normalize(emb['text']).T

  s_f, s_c = logits(emb['video']), logits(emb['video_c'])
  l_f = _np_t2v(s_f, LABELS) + _np_v2t(s_f, LABELS)
  l_c = _np_t2v(s_c, LABELS) + _np_v2t(s_c, LABELS)
  l_t = _np_temp(emb['frames_f'], emb['frames_c'], tau)
  return l_f + lam * l_c + beta * l_t, l_f, l_c, l_t


def test_config_values_reach_the_loss_through_train(emb):
  """Non-default λ, β, τ and logit-scale clip set in the config, pushed through
  losses.make_loss_fn, against NumPy."""
  cfg = config_testutil.recipe()
  cfg.model.arch, cfg.model.csa.enabled = 'fognet', True
  cfg.loss.lambda_clean, cfg.loss.beta_temp = 0.65, 0.85
  cfg.loss.temp_temperature, cfg.loss.max_logit_scale = 0.3, 20.0
  out = _outputs(emb)
  out['logit_scale'] = jnp.asarray(np.log(50.0), jnp.float32)  # above the clip of 20
  total, m = losses.make_loss_fn(cfg)(out, LABELS)
  want, l_f, l_c, l_t = _np_total(emb, 0.65, 0.85, 0.3, 20.0, np.log(50.0))
  np.testing.assert_allclose(m['loss_f'], l_f, rtol=1e-5)
  np.testing.assert_allclose(m['loss_c'], l_c, rtol=1e-5)
  np.testing.assert_allclose(m['loss_temp'], l_t, rtol=1e-5)
  np.testing.assert_allclose(total, want, rtol=1e-5)
  np.testing.assert_allclose(m['logit_scale'], 20.0, rtol=1e-6)
  # The values matter here: the defaults (or no clip) give a clearly different total.
  default, *_ = _np_total(emb, 0.4, 0.1, 0.3, 20.0, np.log(50.0))
  unclipped, *_ = _np_total(emb, 0.65, 0.85, 0.3, 100.0, np.log(50.0))
  assert abs(default - want) > 0.1 and abs(unclipped - want) > 0.1


def test_synthetic_config_beta_reaches_the_loss(emb):
  """configs/synthetic.py:scratch sets β = 1 for L_temp: the loss built from that file uses it."""
  import importlib.util
  import os

  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'synthetic.py'
  )
  spec = importlib.util.spec_from_file_location('synthetic_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config('scratch')
  assert cfg.loss.beta_temp == 1.0 and cfg.model.arch == 'fognet' and cfg.model.csa.enabled
  total, m = losses.make_loss_fn(cfg)(_outputs(emb), LABELS)
  want, _, _, l_t = _np_total(
    emb,
    cfg.loss.lambda_clean,
    1.0,
    cfg.loss.temp_temperature,
    cfg.loss.max_logit_scale,
    emb['logit_scale'],
  )
  np.testing.assert_allclose(total, want, rtol=1e-5)
  assert l_t > 0.5  # β = 1 against the default 0.1 moves the total by > 0.45


# ------------------------------------------------------------------- ActionCLIP's KL loss


def _np_gen_label(labels):
  """ActionCLIP's gen_label: gt[i, k] = 1 where labels[k] == labels[i]."""
  n = len(labels)
  gt = np.zeros((n, n))
  for i in range(n):
    for k in range(n):
      if labels[k] == labels[i]:
        gt[i, k] = 1
  return gt


def _np_kl_rows(logits, gt):
  """KLDivLoss(log_softmax(logits), rows of gt normalised), mean over rows, loops."""
  total = 0.0
  for i in range(logits.shape[0]):
    row = logits[i] - logits[i].max()
    log_p = row - np.log(np.sum(np.exp(row)))
    q = gt[i] / gt[i].sum()
    total += sum(q[j] * (np.log(q[j]) - log_p[j]) for j in range(len(q)) if q[j] > 0)
  return total / logits.shape[0]


@pytest.mark.parametrize('labels', [[0, 1, 2, 3, 4, 5], [0, 1, 0, 2, 1, 0], [3, 3, 3, 3, 3, 3]])
def test_actionclip_kl_matches_numpy_with_repeated_labels(labels):
  rng = np.random.default_rng(5)
  video, text = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  labels = np.asarray(labels)
  s = _np_logits(video, text, np.log(30.0))  # (B, B): video i vs the prompt of sample j
  gt = _np_gen_label(labels)
  want_v2t, want_t2v = _np_kl_rows(s, gt), _np_kl_rows(s.T, gt.T)
  loss, parts = losses.actionclip_kl_loss(
    jnp.asarray(video), jnp.asarray(text), jnp.log(30.0), jnp.asarray(labels)
  )
  np.testing.assert_allclose(float(parts['v2t']), want_v2t, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(parts['t2v']), want_t2v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(loss), 0.5 * (want_v2t + want_t2v), rtol=1e-5, atol=1e-6)


def test_actionclip_kl_through_fognet_loss_and_stacked_streams():
  rng = np.random.default_rng(6)
  labels = jnp.asarray([0, 1, 0, 2])
  text = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  vf = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  vc = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  cfg = config_testutil.recipe('baseline')
  assert cfg.loss.kind == 'actionclip_kl'
  out = {'video_f': vf, 'video_c': None, 'text': text, 'logit_scale': jnp.log(20.0)}
  total, m = losses.fognet_loss(out, labels, cfg.loss, cfg.model)
  want, _ = losses.actionclip_kl_loss(vf, text, jnp.log(20.0), labels)
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
  # 'clean+foggy': 2B videos, the pair's two videos share the sample's prompt
  out['video_f'] = jnp.concatenate([vf, vc])
  total, _ = losses.fognet_loss(out, labels, cfg.loss, cfg.model)
  want, _ = losses.actionclip_kl_loss(
    jnp.concatenate([vf, vc]),
    jnp.concatenate([text, text]),
    jnp.log(20.0),
    jnp.concatenate([labels, labels]),
  )
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
  # the eqs. 8-10 switch on the same baseline
  cfg.loss.kind = 'fognet'
  out['video_f'] = vf
  total, _ = losses.fognet_loss(out, labels, cfg.loss, cfg.model)
  want, _ = losses.video_text_loss(vf, text[:3], jnp.log(20.0), labels)
  total, _ = losses.fognet_loss(dict(out, text=text[:3]), labels, cfg.loss, cfg.model)
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
  with pytest.raises(ValueError, match='one prompt embedding per video'):
    losses.actionclip_kl_loss(vf, text[:3], jnp.log(20.0), labels)


def test_per_sample_prompt_draw():
  import jax

  from fognet_jax import prompts

  tokens = np.arange(3 * 5 * 2).reshape(3, 5, 2)  # (K, C, L): token = 10 k + 2 c + l
  labels = np.asarray([4, 0, 4, 2, 1, 4, 4, 4])
  got = np.asarray(
    prompts.sample_prompts_per_sample(tokens, jax.random.key(0), jnp.asarray(labels))
  )
  assert got.shape == (8, 2)
  k, c = got[:, 0] // 10, (got[:, 0] % 10) // 2
  np.testing.assert_array_equal(c, labels)  # each row is a prompt of its sample's class
  assert len(set(k[labels == 4].tolist())) > 1  # templates drawn per sample, not per class
  assert prompts.sample_prompts_per_sample.per_sample
  assert not getattr(prompts.sample_train_prompts, 'per_sample', False)
