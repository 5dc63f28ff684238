"""OpenAI / Hugging Face CLIP state dicts into the Flax CLIP: key maps, conversion, configs.

A flat ``{key: np.ndarray}`` state dict (as :mod:`fognet_jax.tensor_files` reads it) becomes
a :class:`clip.CLIP` through a key map (Flax parameter path -> (source key, transform)):
:func:`hf_key_map` for Hugging Face ``CLIPModel`` names, :func:`openai_key_map` for OpenAI's
(ViT and ResNet image towers), applied by :func:`convert_state_dict`. The architecture comes
from a Hugging Face ``config.json`` (:func:`config_from_hf`) or is inferred from OpenAI
tensor shapes (:func:`config_from_openai`).
"""

from __future__ import annotations

import re
from typing import Callable
from typing import Iterable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from fognet_jax.models import clip as clip_lib


class CheckpointMismatchError(ValueError):
  """The checkpoint's tensors do not match the model: lists every problem at once."""

  def __init__(
    self, source: str, missing: list[str], unexpected: list[str], wrong_shapes: list[str]
  ):
    self.source = source
    self.missing = missing
    self.unexpected = unexpected
    self.wrong_shapes = wrong_shapes
    lines = [f'Checkpoint {source} does not match the CLIP model:']
    if missing:
      lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(missing))
    if unexpected:
      lines.append(f'  unexpected keys ({len(unexpected)}): ' + ', '.join(unexpected))
    if wrong_shapes:
      lines.append(f'  wrong shapes ({len(wrong_shapes)}): ' + '; '.join(wrong_shapes))
    super().__init__('\n'.join(lines))


# --------------------------------------------------------------------------------------
# Key mappings: Flax parameter path -> (source key, transform).
# --------------------------------------------------------------------------------------

Transform = Callable[[np.ndarray], np.ndarray]
_IDENT: Transform = lambda a: a
_T: Transform = lambda a: a.T  # torch Linear (out, in) -> Flax (in, out)
_OIHW_TO_HWIO: Transform = lambda a: a.transpose(2, 3, 1, 0)


def _split_qkv(index: int, transpose: bool) -> Transform:
  def fn(a):
    part = np.split(a, 3, axis=0)[index] if a.shape and a.shape[0] % 3 == 0 else a
    return part.T if transpose else part

  return fn


def _block_map(ours: str, theirs: str, fused: bool) -> dict[str, tuple[str, Transform]]:
  m = {}
  for ln_ours, ln_theirs in (('ln_1', 'layer_norm1'), ('ln_2', 'layer_norm2')):
    name = ln_ours if fused else ln_theirs
    m[f'{ours}.{ln_ours}.scale'] = (f'{theirs}.{name}.weight', _IDENT)
    m[f'{ours}.{ln_ours}.bias'] = (f'{theirs}.{name}.bias', _IDENT)
  for i, q in enumerate(('q_proj', 'k_proj', 'v_proj')):
    if fused:
      m[f'{ours}.attn.{q}.kernel'] = (f'{theirs}.attn.in_proj_weight', _split_qkv(i, True))
      m[f'{ours}.attn.{q}.bias'] = (f'{theirs}.attn.in_proj_bias', _split_qkv(i, False))
    else:
      m[f'{ours}.attn.{q}.kernel'] = (f'{theirs}.self_attn.{q}.weight', _T)
      m[f'{ours}.attn.{q}.bias'] = (f'{theirs}.self_attn.{q}.bias', _IDENT)
  attn = 'attn' if fused else 'self_attn'
  m[f'{ours}.attn.out_proj.kernel'] = (f'{theirs}.{attn}.out_proj.weight', _T)
  m[f'{ours}.attn.out_proj.bias'] = (f'{theirs}.{attn}.out_proj.bias', _IDENT)
  for lin_ours, lin_theirs in (('c_fc', 'fc1'), ('c_proj', 'fc2')):
    name = lin_ours if fused else lin_theirs
    m[f'{ours}.mlp.{lin_ours}.kernel'] = (f'{theirs}.mlp.{name}.weight', _T)
    m[f'{ours}.mlp.{lin_ours}.bias'] = (f'{theirs}.mlp.{name}.bias', _IDENT)
  return m


def _ln(ours: str, theirs: str) -> dict[str, tuple[str, Transform]]:
  return {f'{ours}.scale': (f'{theirs}.weight', _IDENT), f'{ours}.bias': (f'{theirs}.bias', _IDENT)}


def hf_key_map(config: clip_lib.CLIPConfig) -> dict[str, tuple[str, Transform]]:
  """Flax path -> (Hugging Face ``CLIPModel`` state-dict key, transform)."""
  m = {'logit_scale': ('logit_scale', _IDENT)}
  v, t = 'vision_model', 'text_model'
  m['visual.conv1.kernel'] = (f'{v}.embeddings.patch_embedding.weight', _OIHW_TO_HWIO)
  m['visual.class_embedding'] = (f'{v}.embeddings.class_embedding', _IDENT)
  m['visual.positional_embedding'] = (f'{v}.embeddings.position_embedding.weight', _IDENT)
  m.update(_ln('visual.ln_pre', f'{v}.pre_layrnorm'))
  m.update(_ln('visual.ln_post', f'{v}.post_layernorm'))
  m['visual.proj'] = ('visual_projection.weight', _T)
  for i in range(config.vision_layers):
    m.update(_block_map(f'visual.transformer.resblocks.{i}', f'{v}.encoder.layers.{i}', False))
  m['text.token_embedding.embedding'] = (f'{t}.embeddings.token_embedding.weight', _IDENT)
  m['text.positional_embedding'] = (f'{t}.embeddings.position_embedding.weight', _IDENT)
  m.update(_ln('text.ln_final', f'{t}.final_layer_norm'))
  m['text.text_projection'] = ('text_projection.weight', _T)
  for i in range(config.text_layers):
    m.update(_block_map(f'text.transformer.resblocks.{i}', f'{t}.encoder.layers.{i}', False))
  return m


def _bn(ours: str, theirs: str) -> dict[str, tuple[str, Transform]]:
  return {
    f'{ours}.scale': (f'{theirs}.weight', _IDENT),
    f'{ours}.bias': (f'{theirs}.bias', _IDENT),
    f'{ours}.mean': (f'{theirs}.running_mean', _IDENT),
    f'{ours}.var': (f'{theirs}.running_var', _IDENT),
  }


def _resnet_map(config: clip_lib.CLIPConfig) -> dict[str, tuple[str, Transform]]:
  """OpenAI ``ModifiedResNet`` image tower (``visual.*``)."""
  m = {}
  for i in (1, 2, 3):
    m[f'visual.conv{i}.kernel'] = (f'visual.conv{i}.weight', _OIHW_TO_HWIO)
    m.update(_bn(f'visual.bn{i}', f'visual.bn{i}'))
  for stage, blocks in enumerate(config.vision_layers):
    for b in range(blocks):
      ours, theirs = f'visual.layers.{stage}.{b}', f'visual.layer{stage + 1}.{b}'
      for i in (1, 2, 3):
        m[f'{ours}.conv{i}.kernel'] = (f'{theirs}.conv{i}.weight', _OIHW_TO_HWIO)
        m.update(_bn(f'{ours}.bn{i}', f'{theirs}.bn{i}'))
      if b == 0:  # the first block of every stage changes width or stride
        m[f'{ours}.downsample_conv.kernel'] = (f'{theirs}.downsample.0.weight', _OIHW_TO_HWIO)
        m.update(_bn(f'{ours}.downsample_bn', f'{theirs}.downsample.1'))
  m['visual.attnpool.positional_embedding'] = ('visual.attnpool.positional_embedding', _IDENT)
  for q in ('q_proj', 'k_proj', 'v_proj', 'c_proj'):
    m[f'visual.attnpool.{q}.kernel'] = (f'visual.attnpool.{q}.weight', _T)
    m[f'visual.attnpool.{q}.bias'] = (f'visual.attnpool.{q}.bias', _IDENT)
  return m


def openai_key_map(config: clip_lib.CLIPConfig) -> dict[str, tuple[str, Transform]]:
  """Flax path -> (OpenAI CLIP state-dict key, transform); ViT and ResNet image towers."""
  m = {'logit_scale': ('logit_scale', _IDENT)}
  if config.is_resnet:
    m.update(_resnet_map(config))
  else:
    m['visual.conv1.kernel'] = ('visual.conv1.weight', _OIHW_TO_HWIO)
    m['visual.class_embedding'] = ('visual.class_embedding', _IDENT)
    m['visual.positional_embedding'] = ('visual.positional_embedding', _IDENT)
    m.update(_ln('visual.ln_pre', 'visual.ln_pre'))
    m.update(_ln('visual.ln_post', 'visual.ln_post'))
    m['visual.proj'] = ('visual.proj', _IDENT)
    for i in range(config.vision_layers):
      m.update(
        _block_map(f'visual.transformer.resblocks.{i}', f'visual.transformer.resblocks.{i}', True)
      )
  m['text.token_embedding.embedding'] = ('token_embedding.weight', _IDENT)
  m['text.positional_embedding'] = ('positional_embedding', _IDENT)
  m.update(_ln('text.ln_final', 'ln_final'))
  m['text.text_projection'] = ('text_projection', _IDENT)
  for i in range(config.text_layers):
    m.update(_block_map(f'text.transformer.resblocks.{i}', f'transformer.resblocks.{i}', True))
  return m


# Non-parameter entries that checkpoints may carry (buffers, TorchScript attributes).
HF_IGNORED = re.compile(r'^(text_model|vision_model)\.embeddings\.position_ids$')
OPENAI_IGNORED = re.compile(
  r'^(input_resolution|context_length|vocab_size)$|(^|\.)attn_mask$|\.num_batches_tracked$'
)


def abstract_model(config, dtype, remat, attention_impl=None, residual_dtype=None):
  return nnx.eval_shape(
    lambda: clip_lib.CLIP(
      config,
      dtype=dtype,
      remat=remat,
      attention_impl=attention_impl,
      residual_dtype=residual_dtype,
      rngs=nnx.Rngs(0),
    )
  )


def _path_str(path: tuple) -> str:
  return '.'.join(str(p) for p in path)


def convert_state_dict(
  tensors: dict[str, np.ndarray],
  config: clip_lib.CLIPConfig,
  key_map: dict[str, tuple[str, Transform]],
  *,
  source: str,
  ignored: re.Pattern | None = None,
  dtype=jnp.float32,
  remat: bool = False,
  attention_impl: str | None = None,
  residual_dtype=None,
) -> clip_lib.CLIP:
  """Builds a :class:`clip.CLIP` from a flat tensor dict through a key map.

  Every model parameter must be provided, every checkpoint tensor must be used (except
  known buffers matched by ``ignored``), and every shape must agree; otherwise a single
  :class:`CheckpointMismatchError` lists all problems.
  """
  abstract = abstract_model(config, dtype, remat, attention_impl, residual_dtype)
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  expected = {_path_str(p): v for p, v in flat}
  unmapped = sorted(set(expected) - set(key_map))
  if unmapped:  # a bug in the key map, never the user's fault
    raise AssertionError(f'no checkpoint mapping for model parameters {unmapped}')
  used = {src for src, _ in key_map.values()}
  missing = sorted(used - set(tensors))
  unexpected = sorted(
    k for k in tensors if k not in used and not (ignored is not None and ignored.search(k))
  )
  wrong, values = [], {}
  for ours, (src, fn) in key_map.items():
    if src not in tensors:
      continue
    arr = np.asarray(tensors[src])
    try:
      conv = fn(arr)
    except ValueError:
      conv = None
    want = tuple(expected[ours].shape)
    if conv is None or tuple(conv.shape) != want:
      got = 'unconvertible' if conv is None else tuple(conv.shape)
      wrong.append(f'{src} has shape {tuple(arr.shape)} (converted {got}) but {ours} needs {want}')
      continue
    values[ours] = conv
  if missing or unexpected or wrong:
    raise CheckpointMismatchError(source, missing, sorted(set(unexpected)), sorted(set(wrong)))
  for path, var in flat:
    var.set_value(jnp.asarray(values[_path_str(path)], jnp.float32))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


# --------------------------------------------------------------------------------------
# Config inference.
# --------------------------------------------------------------------------------------


def _mlp_dim(cfg: dict) -> int | None:
  # None (the default 4 * width) keeps configs equal to the named ones.
  mlp = int(cfg['intermediate_size'])
  return None if mlp == 4 * int(cfg['hidden_size']) else mlp


def config_from_hf(config_json: dict, source: str) -> clip_lib.CLIPConfig:
  """CLIPConfig from a Hugging Face ``CLIPModel`` ``config.json`` (missing keys = HF defaults)."""
  model_type = config_json.get('model_type', 'clip')
  if model_type != 'clip':
    raise ValueError(
      f"{source}: model_type is {model_type!r}, expected 'clip' (a CLIPModel "
      'checkpoint with both towers)'
    )
  # Defaults of transformers' CLIPTextConfig / CLIPVisionConfig (save_pretrained omits them).
  text_defaults = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act='quick_gelu',
    layer_norm_eps=1e-5,
  )
  vision_defaults = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
    hidden_act='quick_gelu',
    layer_norm_eps=1e-5,
    num_channels=3,
  )
  text = {**text_defaults, **(config_json.get('text_config') or {})}
  vision = {**vision_defaults, **(config_json.get('vision_config') or {})}
  for name, cfg in (('text_config', text), ('vision_config', vision)):
    if cfg['hidden_act'] not in ('quick_gelu', 'gelu'):
      raise ValueError(
        f'{source}: {name}.hidden_act={cfg["hidden_act"]!r} is not supported '
        "(only 'quick_gelu' and 'gelu')"
      )
    if abs(float(cfg['layer_norm_eps']) - clip_lib.LAYER_NORM_EPS) > 1e-12:
      raise ValueError(
        f'{source}: {name}.layer_norm_eps={cfg["layer_norm_eps"]} is not '
        f'supported (only {clip_lib.LAYER_NORM_EPS})'
      )
  if text['hidden_act'] != vision['hidden_act']:
    raise ValueError(
      f'{source}: text and vision hidden_act differ '
      f'({text["hidden_act"]!r} vs {vision["hidden_act"]!r})'
    )
  if vision['num_channels'] != 3:
    raise ValueError(f'{source}: vision_config.num_channels={vision["num_channels"]}, need 3')
  try:
    return clip_lib.CLIPConfig(
      embed_dim=int(config_json.get('projection_dim', 512)),
      image_size=int(vision['image_size']),
      patch_size=int(vision['patch_size']),
      vision_width=int(vision['hidden_size']),
      vision_layers=int(vision['num_hidden_layers']),
      vision_heads=int(vision['num_attention_heads']),
      vision_mlp_dim=_mlp_dim(vision),
      context_length=int(text['max_position_embeddings']),
      vocab_size=int(text['vocab_size']),
      text_width=int(text['hidden_size']),
      text_layers=int(text['num_hidden_layers']),
      text_heads=int(text['num_attention_heads']),
      text_mlp_dim=_mlp_dim(text),
      activation=text['hidden_act'],
    )
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from e


def _count_layers(tensors: Iterable[str], prefix: str) -> int:
  pat = re.compile(re.escape(prefix) + r'(\d+)\.')
  ids = {int(m.group(1)) for k in tensors for m in [pat.match(k)] if m}
  return max(ids) + 1 if ids else 0


def _text_config(tensors: dict[str, np.ndarray]) -> dict:
  text_width = int(tensors['ln_final.weight'].shape[0])
  return dict(
    embed_dim=int(tensors['text_projection'].shape[1]),
    context_length=int(tensors['positional_embedding'].shape[0]),
    vocab_size=int(tensors['token_embedding.weight'].shape[0]),
    text_width=text_width,
    text_layers=_count_layers(tensors, 'transformer.resblocks.'),
    text_heads=max(text_width // 64, 1),
  )


def _resnet_config_from_openai(tensors: dict[str, np.ndarray], source: str) -> clip_lib.CLIPConfig:
  needed = [
    'visual.layer1.0.conv1.weight',
    'visual.attnpool.positional_embedding',
    'token_embedding.weight',
    'positional_embedding',
    'ln_final.weight',
    'text_projection',
  ]
  absent = [k for k in needed if k not in tensors]
  if absent:
    raise CheckpointMismatchError(source, absent, [], [])
  width = int(tensors['visual.layer1.0.conv1.weight'].shape[0])
  grid = int(round((tensors['visual.attnpool.positional_embedding'].shape[0] - 1) ** 0.5))
  layers = tuple(_count_layers(tensors, f'visual.layer{i}.') for i in (1, 2, 3, 4))
  try:
    return clip_lib.CLIPConfig(
      image_size=32 * grid,
      vision_width=width,
      vision_layers=layers,
      vision_heads=width * 32 // 64,
      **_text_config(tensors),
    )
  except ValueError as e:
    raise ValueError(f'{source}: cannot infer a ResNet CLIP config from the tensors: {e}') from e


def config_from_openai(tensors: dict[str, np.ndarray], source: str) -> clip_lib.CLIPConfig:
  """CLIPConfig inferred from OpenAI state-dict shapes (as OpenAI's ``build_model``)."""
  if 'visual.layer1.0.conv1.weight' in tensors or 'visual.attnpool.positional_embedding' in tensors:
    return _resnet_config_from_openai(tensors, source)
  needed = [
    'visual.conv1.weight',
    'visual.positional_embedding',
    'visual.proj',
    'token_embedding.weight',
    'positional_embedding',
    'ln_final.weight',
    'text_projection',
  ]
  absent = [k for k in needed if k not in tensors]
  if absent:
    raise CheckpointMismatchError(source, absent, [], [])
  conv = tensors['visual.conv1.weight']  # (width, 3, p, p)
  vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
  grid = int(round((tensors['visual.positional_embedding'].shape[0] - 1) ** 0.5))
  try:
    return clip_lib.CLIPConfig(
      image_size=patch * grid,
      patch_size=patch,
      vision_width=vision_width,
      vision_layers=_count_layers(tensors, 'visual.transformer.resblocks.'),
      vision_heads=max(vision_width // 64, 1),
      **_text_config(tensors),
    )
  except ValueError as e:
    raise ValueError(f'{source}: cannot infer a CLIP config from the tensors: {e}') from e
