"""Parity of the Flax CLIP with transformers' PyTorch CLIPModel, and checkpoint import.

The reference model gets random weights (LayerNorm and biases randomised too), is saved
with ``save_pretrained`` (and re-keyed to OpenAI's names for the ``.pt`` tests) and loaded
with ``clip.from_pretrained``. Errors are ``max |jax - torch| / max |torch|`` per output.
"""

import os
import pickle
import zipfile

import clip_testutil as U
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from fognet_jax import clip_convert
from fognet_jax import clip_weights
from fognet_jax.models import clip

FP32_TOL = 1e-5
BF16_TOL = 2e-2


def _jax_outputs(model, pixels, ids):
  px, tid = jnp.asarray(pixels), jnp.asarray(ids, jnp.int32)
  # One jit: XLA shares the towers between the embeddings and the logits.
  return jax.jit(lambda m, x, t: (m.encode_image(x), m.encode_text(t), m(x, t)[0]))(model, px, tid)


def _check(name, ours, ref, tol):
  errs = {k: U.max_rel_err(a, b) for k, a, b in zip(('image', 'text', 'logits'), ours, ref)}
  print(f'\nparity {name}: ' + ', '.join(f'{k} {v:.2e}' for k, v in errs.items()))
  for k, v in errs.items():
    assert v < tol, f'{name} {k}: max relative error {v:.3e} >= {tol}'


def _params(model):
  return {
    '.'.join(map(str, p)): np.asarray(v.get_value())
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  cfg = clip.CONFIGS['tiny']
  root = tmp_path_factory.mktemp('tiny')
  hf = U.random_hf_model(cfg, seed=0)
  hf.save_pretrained(root / 'hf')
  pixels, ids = U.random_inputs(cfg, seed=0)
  return dict(
    cfg=cfg,
    root=root,
    hf=hf,
    dir=str(root / 'hf'),
    pixels=pixels,
    ids=ids,
    ref=U.hf_outputs(hf, pixels, ids),
  )


@pytest.mark.parametrize('dtype,tol', [('float32', FP32_TOL), ('bfloat16', BF16_TOL)])
def test_tiny_hf_parity(tiny, dtype, tol):
  model = clip_weights.load(tiny['dir'], dtype=dtype)
  assert model.config == tiny['cfg']
  _check(f'tiny HF {dtype}', _jax_outputs(model, tiny['pixels'], tiny['ids']), tiny['ref'], tol)


def test_tiny_hf_parity_interpolated_resolution(tiny):
  # 48x64 input on a 32x32 checkpoint: position embeddings resized like HF's
  # interpolate_pos_encoding (bicubic, align_corners=False).
  pixels = np.random.default_rng(3).standard_normal((2, 48, 64, 3)).astype(np.float32)
  ref = U.hf_outputs(tiny['hf'], pixels, tiny['ids'], interpolate=True)
  model = clip_weights.load(tiny['dir'])
  _check('tiny HF fp32 48x64 interpolated', _jax_outputs(model, pixels, tiny['ids']), ref, FP32_TOL)


@pytest.mark.parametrize('kind', ['torchscript', 'state_dict'])
def test_tiny_openai_pt_parity(tiny, kind):
  path = str(tiny['root'] / f'openai_{kind}.pt')
  state = U.openai_state_dict(tiny['hf'])
  if kind == 'torchscript':
    U.save_torchscript_openai(state, path)
  else:
    U.save_plain_state_dict(state, path)
  # Tiny heads are 16 wide, so the head count is given (OpenAI's are inferred: 64 wide).
  model = clip_weights.load(path, config='tiny')
  _check(
    f'tiny OpenAI {kind} fp32',
    _jax_outputs(model, tiny['pixels'], tiny['ids']),
    tiny['ref'],
    FP32_TOL,
  )
  model = clip_weights.load(path, config='tiny', dtype=jnp.bfloat16)
  _check(
    f'tiny OpenAI {kind} bf16',
    _jax_outputs(model, tiny['pixels'], tiny['ids']),
    tiny['ref'],
    BF16_TOL,
  )


def test_openai_config_inference():
  cfg = clip.get_config('tiny', vision_heads=1, text_heads=1)  # 64-wide heads
  hf = U.random_hf_model(cfg, seed=1)
  tensors = U.openai_state_dict(hf)
  assert clip_convert.config_from_openai(tensors, 'x.pt') == clip.get_config(
    cfg, vision_mlp_dim=None, text_mlp_dim=None
  )
  # A ResNet tower's first block without its attention pool: the missing key is named.
  tensors['visual.layer1.0.conv1.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(
    clip_weights.CheckpointMismatchError, match='visual.attnpool.positional_embedding'
  ):
    clip_convert.config_from_openai(tensors, 'x.pt')


def test_pytorch_model_bin_and_bf16_safetensors(tiny, tmp_path):
  # pytorch_model.bin (torch zip pickle) read through the restricted unpickler.
  d = tmp_path / 'bin'
  d.mkdir()
  (d / 'config.json').write_text((tiny['root'] / 'hf' / 'config.json').read_text())
  torch.save(tiny['hf'].state_dict(), d / 'pytorch_model.bin')
  ref = _params(clip_weights.load(tiny['dir']))
  got = _params(clip_weights.load(str(d)))
  assert ref.keys() == got.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  # bfloat16 safetensors: values equal the bf16-rounded fp32 weights, params stay fp32.
  import copy

  copy.deepcopy(tiny['hf']).to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
  got = _params(clip_weights.load(str(tmp_path / 'bf16')))
  for k in ref:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], ref[k].astype(jnp.bfloat16).astype(np.float32))


def _mutate(tensors, remove, rename_extra, reshape):
  t = dict(tensors)
  t.pop(remove)
  t[rename_extra] = np.zeros((2,), np.float32)
  t[reshape] = np.zeros(t[reshape].shape[:-1] + (t[reshape].shape[-1] + 1,), np.float32)
  return t


def test_hf_mismatches_listed_together(tiny, tmp_path):
  from safetensors.torch import save_file

  sd = {k: v.contiguous() for k, v in tiny['hf'].state_dict().items()}
  sd.pop('text_model.encoder.layers.1.mlp.fc2.bias')
  sd.pop('vision_model.post_layernorm.weight')
  sd['vision_model.extra_head.weight'] = torch.zeros(3)
  sd['text_model.embeddings.position_embedding.weight'] = torch.zeros(76, 64)
  d = tmp_path / 'bad'
  d.mkdir()
  (d / 'config.json').write_text((tiny['root'] / 'hf' / 'config.json').read_text())
  save_file(sd, str(d / 'model.safetensors'))
  with pytest.raises(clip_weights.CheckpointMismatchError) as info:
    clip_weights.load(str(d))
  err = info.value
  assert err.missing == [
    'text_model.encoder.layers.1.mlp.fc2.bias',
    'vision_model.post_layernorm.weight',
  ]
  assert err.unexpected == ['vision_model.extra_head.weight']
  assert len(err.wrong_shapes) == 1 and 'position_embedding' in err.wrong_shapes[0]
  for s in err.missing + err.unexpected:
    assert s in str(err)
  assert str(d) in str(err)


def test_openai_mismatches_listed_together(tiny, tmp_path):
  state = U.openai_state_dict(tiny['hf'])
  state = _mutate(
    state,
    'visual.transformer.resblocks.0.attn.in_proj_bias',
    'visual.transformer.resblocks.0.attn.q_bias',
    'transformer.resblocks.1.mlp.c_fc.weight',
  )
  path = str(tmp_path / 'bad.pt')
  U.save_plain_state_dict(state, path)
  with pytest.raises(clip_weights.CheckpointMismatchError) as info:
    clip_weights.load(path, config='tiny')
  err = info.value
  assert err.missing == ['visual.transformer.resblocks.0.attn.in_proj_bias']
  assert err.unexpected == ['visual.transformer.resblocks.0.attn.q_bias']
  assert len(err.wrong_shapes) == 1 and 'transformer.resblocks.1.mlp.c_fc.weight' in str(err)
  # A checkpoint for another architecture: every differing tensor is listed as wrong shape.
  good = str(tmp_path / 'good.pt')
  U.save_plain_state_dict(U.openai_state_dict(tiny['hf']), good)
  wide = clip.get_config('tiny', text_width=128, text_heads=2)
  with pytest.raises(clip_weights.CheckpointMismatchError, match='wrong shapes') as info:
    clip_weights.load(good, config=wide)
  err = info.value
  # Independent list: the tensors whose shapes differ between the two architectures.
  ours = U.openai_state_dict(tiny['hf'])
  theirs = U.openai_state_dict(U.random_hf_model(wide, seed=2))
  differing = sorted(k for k in ours if np.shape(ours[k]) != np.shape(theirs[k]))
  assert len(differing) > 10
  assert not err.missing and not err.unexpected
  # (a fused in_proj tensor feeds three parameters and may be named once for each)
  assert sorted({entry.split()[0] for entry in err.wrong_shapes}) == differing
  for k in differing:
    assert k in str(err)


def test_restricted_unpickler_refuses_code(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  path = tmp_path / 'evil.pt'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', pickle.dumps({'x': Evil()}, protocol=2))
  with pytest.raises(clip_weights.UnsafeCheckpointError, match='refusing to unpickle'):
    clip_weights.load(str(path))
  assert not marker.exists()
  with pytest.raises(ValueError, match='not a PyTorch zip archive'):
    (tmp_path / 'junk.pt').write_bytes(b'not a zip')
    clip_weights.load(str(tmp_path / 'junk.pt'))


def test_orbax_roundtrip(tiny, tmp_path):
  model = clip_weights.load(tiny['dir'])
  clip_weights.save(model, str(tmp_path / 'ckpt'))
  again = clip_weights.load(str(tmp_path / 'ckpt'), dtype='bfloat16', remat=True)
  assert again.config == model.config and again.dtype == jnp.bfloat16 and again.remat
  a, b = _params(model), _params(again)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  with pytest.raises(FileExistsError):
    clip_weights.save(model, str(tmp_path / 'ckpt'))


def test_path_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match='no such checkpoint'):
    clip_weights.load(str(tmp_path / 'nope'))
  with pytest.raises(FileNotFoundError, match='config.json'):
    clip_weights.load(str(tmp_path))
  (tmp_path / 'config.json').write_text('{"model_type": "siglip"}')
  with pytest.raises(ValueError, match='model_type'):
    clip_weights.load(str(tmp_path))
  (tmp_path / 'config.json').write_text('{"model_type": "clip"}')
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    clip_weights.load(str(tmp_path))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(OSError, match='Pass a local directory'):
    clip_weights.load('openai/clip-vit-base-patch16')


# ------------------------------- full ViT-B/16 --------------------------------------


@pytest.fixture(scope='module')
def b16(tmp_path_factory):
  cfg = clip.CONFIGS['ViT-B/16']
  root = tmp_path_factory.mktemp('b16')
  hf = U.random_hf_model(cfg, seed=5)
  assert sum(p.numel() for p in hf.parameters()) == 149_620_737
  hf.save_pretrained(root / 'hf')
  pixels, ids = U.random_inputs(cfg, n_img=2, n_txt=2, seed=5)
  ref = U.hf_outputs(hf, pixels, ids)
  state = U.openai_state_dict(hf)
  del hf
  U.save_torchscript_openai(state, str(root / 'ViT-B-16.pt'))
  del state
  return dict(
    cfg=cfg, dir=str(root / 'hf'), pt=str(root / 'ViT-B-16.pt'), pixels=pixels, ids=ids, ref=ref
  )


def test_b16_parity_hf_and_openai(b16):
  model = clip_weights.load(b16['dir'])
  assert model.config == b16['cfg']
  assert clip.count_params(model) == 149_620_737
  _check('ViT-B/16 HF fp32', _jax_outputs(model, b16['pixels'], b16['ids']), b16['ref'], FP32_TOL)
  # The OpenAI TorchScript-style archive (config inferred) gives identical parameters.
  from_pt = clip_weights.load(b16['pt'])
  assert from_pt.config == b16['cfg']
  a, b = _params(model), _params(from_pt)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  del model, a, b
  _check(
    'ViT-B/16 OpenAI .pt fp32',
    _jax_outputs(from_pt, b16['pixels'], b16['ids']),
    b16['ref'],
    FP32_TOL,
  )


def test_b16_parity_bf16(b16):
  model = clip_weights.load(b16['dir'], dtype=jnp.bfloat16)
  _check('ViT-B/16 HF bf16', _jax_outputs(model, b16['pixels'], b16['ids']), b16['ref'], BF16_TOL)
