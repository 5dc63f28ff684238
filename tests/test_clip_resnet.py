"""OpenAI's ResNet CLIP image tower (``ModifiedResNet``): parity with a PyTorch reference,
checkpoint import, config inference, parameter counts, save/load.

The reference (``clip_testutil.torch_modified_resnet``) has OpenAI's layout and parameter
names and random weights, biases *and* batch-norm statistics; the text tower comes from a
random transformers ``CLIPModel``. Errors are ``max |jax - torch| / max |torch|``.
"""

import clip_testutil as U
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fognet_jax import clip_convert
from fognet_jax import clip_weights
from fognet_jax.models import clip

FP32_TOL = 1e-5
BF16_TOL = 3e-2


def _openai_tensors(cfg, seed=0):
  """OpenAI-named state dict of a random ResNet CLIP, and its two PyTorch towers."""
  vision = U.torch_modified_resnet(
    cfg.vision_layers, cfg.vision_width, cfg.vision_heads, cfg.embed_dim, cfg.image_size, seed=seed
  )
  text = U.random_hf_model(clip.get_config('tiny', embed_dim=cfg.embed_dim), seed=seed)
  tensors = {k: v for k, v in U.openai_state_dict(text).items() if not k.startswith('visual.')}
  tensors.update({f'visual.{k}': v.detach().numpy() for k, v in vision.state_dict().items()})
  return tensors, vision, text


@pytest.fixture(scope='module')
def rn(tmp_path_factory):
  cfg = clip.CONFIGS['tiny-rn']
  tensors, vision, text = _openai_tensors(cfg)
  root = tmp_path_factory.mktemp('rn')
  pixels, ids = U.random_inputs(cfg, seed=0)
  img = U.torch_image_features(vision, pixels)
  txt = U.hf_outputs(text, pixels[:, :32, :32], ids)[1]  # text features only
  scale = float(np.exp(tensors['logit_scale']))
  norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  logits = scale * norm(img) @ norm(txt).T
  return dict(cfg=cfg, tensors=tensors, root=root, pixels=pixels, ids=ids, ref=(img, txt, logits))


def _outputs(model, pixels, ids):
  px, tid = jnp.asarray(pixels), jnp.asarray(ids, jnp.int32)
  return jax.jit(lambda m, x, t: (m.encode_image(x), m.encode_text(t), m(x, t)[0]))(model, px, tid)


def _check(name, ours, ref, tol, logits_tol=None):
  errs = {k: U.max_rel_err(a, b) for k, a, b in zip(('image', 'text', 'logits'), ours, ref)}
  print(f'\nparity {name}: ' + ', '.join(f'{k} {v:.2e}' for k, v in errs.items()))
  for k, v in errs.items():
    limit = logits_tol if (k == 'logits' and logits_tol) else tol
    assert v < limit, f'{name} {k}: max relative error {v:.3e} >= {limit}'


def _convert(rn):
  tensors = {k: v for k, v in rn['tensors'].items() if not k.endswith('num_batches_tracked')}
  return clip_convert.convert_state_dict(
    tensors, rn['cfg'], clip_convert.openai_key_map(rn['cfg']), source='x'
  )


@pytest.mark.parametrize('kind', ['torchscript', 'state_dict'])
def test_resnet_openai_pt_parity(rn, kind):
  path = str(rn['root'] / f'rn_{kind}.pt')
  if kind == 'torchscript':
    U.save_torchscript_openai(rn['tensors'], path)
  else:
    U.save_plain_state_dict(rn['tensors'], path)
  # The tiny text tower has 16-wide heads, so the config is named (OpenAI's are inferred).
  model = clip_weights.load(path, config='tiny-rn')
  _check(
    f'tiny-rn OpenAI {kind} fp32', _outputs(model, rn['pixels'], rn['ids']), rn['ref'], FP32_TOL
  )
  model = clip_weights.load(path, config='tiny-rn', dtype=jnp.bfloat16)
  ours = _outputs(model, rn['pixels'], rn['ids'])
  # The random logits here are small (|cos| < 0.1 before the scale), so the bf16 rounding of
  # both embeddings shows up larger relative to them than in the embeddings themselves.
  _check(f'tiny-rn OpenAI {kind} bf16', ours, rn['ref'], BF16_TOL, logits_tol=1e-1)
  # Tighter, per entry: with r_i, t_j the relative errors of image i's and text j's
  # embeddings, |cos(a', b') - cos(a, b)| <= |â' - â| + |b̂' - b̂| <= 2 r_i + 2 t_j, so the bf16
  # logits lie within scale * 2 (r_i + t_j) of the reference's ...
  img, txt, logits = (np.asarray(x, np.float64) for x in ours)
  ref_img, ref_txt, ref_logits = rn['ref']
  scale = float(np.exp(rn['tensors']['logit_scale']))
  rel = lambda a, b: np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
  r, t = rel(img, ref_img), rel(txt, ref_txt)
  assert np.all(np.abs(logits - ref_logits) <= scale * (2 * (r[:, None] + t[None, :]) + 1e-5))
  # ... and they are the scaled cosines of the bf16 model's own embeddings to fp32 precision.
  norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  np.testing.assert_allclose(logits, scale * norm(img) @ norm(txt).T, rtol=1e-5, atol=1e-5 * scale)


def test_resnet_batch_norm_statistics_are_loaded(rn):
  model = _convert(rn)
  bn = model.visual.layers[0][0].bn2
  np.testing.assert_array_equal(
    np.asarray(bn.mean[...]), rn['tensors']['visual.layer1.0.bn2.running_mean']
  )
  np.testing.assert_array_equal(
    np.asarray(bn.var[...]), rn['tensors']['visual.layer1.0.bn2.running_var']
  )
  # Statistics are state, not parameters: the optimizer never sees them.
  names = {'.'.join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert 'visual.layers.0.0.bn2.scale' in names and 'visual.layers.0.0.bn2.mean' not in names


def test_resnet_mismatches_listed(rn, tmp_path):
  tensors = dict(rn['tensors'])
  del tensors['visual.layer2.0.downsample.1.running_var']
  tensors['visual.attnpool.q_proj.weight'] = tensors['visual.attnpool.q_proj.weight'][:, :5]
  path = str(tmp_path / 'bad.pt')
  U.save_plain_state_dict(tensors, path)
  with pytest.raises(clip_weights.CheckpointMismatchError) as e:
    clip_weights.load(path, config='tiny-rn')
  msg = str(e.value)
  assert (
    'visual.layer2.0.downsample.1.running_var' in msg and 'visual.attnpool.q_proj.weight' in msg
  )


def test_resnet_config_inference():
  # 64-wide heads everywhere, as in OpenAI's models: the config is read off the shapes.
  cfg = clip.get_config(
    'tiny-rn',
    vision_layers=(2, 1, 3, 1),
    vision_width=16,
    vision_heads=8,
    image_size=96,
    text_heads=1,
    embed_dim=24,
  )
  tensors, _, _ = _openai_tensors(cfg, seed=1)
  assert clip_convert.config_from_openai(tensors, 'x.pt') == cfg


def test_rn50_parameter_count_matches_pytorch():
  cfg = clip.CONFIGS['RN50']
  ref = U.torch_modified_resnet(
    cfg.vision_layers, cfg.vision_width, cfg.vision_heads, cfg.embed_dim, cfg.image_size
  )
  n_ref = sum(p.numel() for p in ref.parameters())
  model = nnx.eval_shape(lambda: clip.CLIP(cfg, rngs=nnx.Rngs(0)))
  assert clip.count_params(model.visual) == n_ref == 38_316_896
  # The whole model: OpenAI's RN50 CLIP has 102,007,137 parameters.
  assert clip.count_params(model) == 102_007_137


def test_resnet_orbax_roundtrip_keeps_statistics(rn, tmp_path):
  model = _convert(rn)
  clip_weights.save(model, str(tmp_path / 'saved'))
  back = clip_weights.load(str(tmp_path / 'saved'))
  assert back.config == rn['cfg']
  _check('tiny-rn orbax roundtrip', _outputs(back, rn['pixels'], rn['ids']), rn['ref'], FP32_TOL)


def test_resnet_from_scratch_and_other_resolutions():
  model = clip.create('tiny-rn', seed=0)
  x = jax.random.normal(jax.random.key(0), (2, 96, 64, 3))  # not the 64x64 it is laid out for
  out = model.encode_image(x)
  assert out.shape == (2, 32) and bool(jnp.all(jnp.isfinite(out)))
  # He-initialised convolutions keep the feature scale through the norm-free tower.
  feats = model.visual.features(jax.random.normal(jax.random.key(1), (4, 64, 64, 3)))
  assert 0.1 < float(feats.std()) < 10.0
  with pytest.raises(ValueError, match='smaller than'):
    model.encode_image(jnp.zeros((1, 16, 16, 3)))


def test_resnet_config_errors():
  with pytest.raises(ValueError, match='vision_layers'):
    clip.get_config('tiny-rn', vision_layers=(1, 1, 1))
  with pytest.raises(ValueError, match='multiple of 32'):
    clip.get_config('tiny-rn', image_size=48)
  with pytest.raises(ValueError, match='vision_heads'):
    clip.get_config('tiny-rn', vision_heads=3)


def test_resnet_analytic_macs_against_xla():
  """The hand count of RN50's multiply-adds against XLA's cost analysis (flops / 2).

  XLA skips the taps that fall on the zero padding of the 3x3 convolutions (18 % of them on
  the 7x7 maps of the last stage); the hand count, like the papers' counters, keeps them.
  """
  from fognet_jax.tools import model_cost

  cfg = clip.CONFIGS['RN50']
  model = nnx.eval_shape(lambda: clip.CLIP(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model.visual)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  fn = lambda s, x: nnx.merge(graphdef, s)(x)
  cost = jax.jit(fn).lower(state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)).compile()
  analysis = cost.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  xla_macs = analysis['flops'] / 2
  hand = model_cost.resnet_macs_analytic(cfg, 224)
  print(f'\nRN50 image tower, 224x224: hand count {hand / 1e9:.3f} GMACs, XLA {xla_macs / 1e9:.3f}')
  assert 0.95 < xla_macs / hand <= 1.0
