"""Importing CLIP weights into the Flax model, and saving converted models with Orbax.

Formats read by :func:`load`:

* **Hugging Face directory** as ``CLIPModel.save_pretrained`` writes it: ``config.json``
  plus ``model.safetensors`` (or a sharded ``model.safetensors.index.json``) or
  ``pytorch_model.bin``. The architecture comes from ``config.json``.
* **OpenAI ``.pt``** (the TorchScript archives OpenAI publishes, e.g. ``ViT-B-16.pt``), or
  a plain ``torch.save(state_dict)`` file with OpenAI's key names. The configuration is
  inferred from the tensor shapes, as OpenAI's ``build_model`` does.
* **Orbax checkpoint** written by :func:`save` (``clip_config.json`` + ``params/``).
* **Hub name** such as ``'openai/clip-vit-base-patch16'``: downloaded with
  ``huggingface_hub`` when the machine is online; offline it fails fast with an error
  asking for a local directory.

What is trusted: PyTorch files (``.pt``, ``.bin``) are zip archives whose ``data.pkl`` is
a pickle. They are read here *without torch and without running pickled code*: a
restricted unpickler only accepts ``collections.OrderedDict``, the tensor/parameter
rebuild functions of ``torch._utils`` (reimplemented here to produce NumPy arrays), the
``torch.*Storage`` dtype markers, and ``__torch__.*`` TorchScript classes, which become
inert attribute containers (the archive's ``code/`` is never read or executed). Any
other global in the pickle raises :class:`UnsafeCheckpointError`. Safetensors files are
parsed directly (JSON header + raw bytes). Tensor data are trusted only to be numbers.

Mismatches raise :class:`CheckpointMismatchError` listing *all* missing keys, unexpected
keys and wrong shapes at once; no parameter is ever left at its random initialisation.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import re
import socket
import struct
import zipfile
from typing import Any
from typing import Callable
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fognet_jax.models import clip as clip_lib

ORBAX_CONFIG_FILE = 'clip_config.json'
ORBAX_PARAMS_DIR = 'params'
_FORMAT_TAG = 'fognet_jax.clip/v1'


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


class UnsafeCheckpointError(ValueError):
  """A pickle inside a PyTorch archive references a global that is not allowed."""


# --------------------------------------------------------------------------------------
# Reading raw tensors: safetensors and PyTorch zip archives (no torch needed).
# --------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into NumPy arrays (bfloat16 via ml_dtypes)."""
  with open(path, 'rb') as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f'{path}: not a safetensors file (truncated header)')
    (header_len,) = struct.unpack('<Q', raw)
    if header_len > 100_000_000:
      raise ValueError(f'{path}: not a safetensors file (header length {header_len})')
    try:
      header = json.loads(f.read(header_len))
    except ValueError as e:
      raise ValueError(f'{path}: not a safetensors file (bad JSON header: {e})') from e
  data = np.memmap(path, dtype=np.uint8, mode='r', offset=8 + header_len)
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {name} has unsupported dtype {info["dtype"]}')
    begin, end = info['data_offsets']
    arr = np.frombuffer(data[begin:end], dtype=_SAFETENSORS_DTYPES[info['dtype']])
    out[name] = np.array(arr.reshape(info['shape']))
  return out


_TORCH_STORAGE_DTYPES = {
  'FloatStorage': np.float32,
  'DoubleStorage': np.float64,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: Any


class _ScriptObject:
  """Inert stand-in for a ``__torch__.*`` TorchScript object: just holds its attributes."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    self.attributes = {}

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.attributes = dict(state)
    elif isinstance(state, tuple) and state and isinstance(state[0], dict):
      self.attributes = dict(state[0])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """NumPy version of ``torch._utils._rebuild_tensor_v2``."""
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[storage_offset])
  itemsize = storage.dtype.itemsize
  needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
  if any(n == 0 for n in size):
    return np.zeros(size, storage.dtype)
  if needed > storage.size:
    raise ValueError(
      f'tensor view (offset {storage_offset}, size {size}, stride {stride}) '
      f'exceeds its storage of {storage.size} elements'
    )
  view = np.lib.stride_tricks.as_strided(
    storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride)
  )
  return np.array(view)


def _rebuild_parameter(data, *unused_args):
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for ``data.pkl`` of PyTorch archives that executes no pickled code."""

  def __init__(self, file, load_storage: Callable[[str, Any], np.ndarray], source: str):
    super().__init__(file)
    self._load_storage = load_storage
    self._source = source

  def find_class(self, module, name):
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor
    if module == 'torch._utils' and name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
      return _rebuild_parameter
    if module == 'torch' and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(_TORCH_STORAGE_DTYPES[name])
    if module.startswith('__torch__'):
      return _ScriptObject
    raise UnsafeCheckpointError(
      f'{self._source}: refusing to unpickle global {module}.{name}; only tensors, '
      'storages, OrderedDict and TorchScript attribute containers are allowed'
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise UnsafeCheckpointError(f'{self._source}: unsupported persistent id {pid!r}')
    _, storage_type, key, _location, _numel = pid
    if not isinstance(storage_type, _StorageType):
      raise UnsafeCheckpointError(f'{self._source}: unsupported storage type {storage_type!r}')
    return self._load_storage(str(key), storage_type.dtype)


def _collect_tensors(obj: Any, prefix: str, out: dict[str, np.ndarray], depth: int = 0):
  """Flattens nested dicts / TorchScript objects into ``{'a.b.c': array}``."""
  if depth > 64:
    raise ValueError('checkpoint object tree is too deep')
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, _ScriptObject):
    for k, v in obj.attributes.items():
      _collect_tensors(v, f'{prefix}.{k}' if prefix else str(k), out, depth + 1)
  elif isinstance(obj, dict):
    for k, v in obj.items():
      _collect_tensors(v, f'{prefix}.{k}' if prefix else str(k), out, depth + 1)


def read_torch_archive(path: str) -> dict[str, np.ndarray]:
  """Reads tensors from a PyTorch zip archive (``torch.save`` or TorchScript) safely.

  Returns a flat ``{name: np.ndarray}`` (the state dict; for TorchScript archives the
  module attributes that are tensors, named like ``state_dict()`` keys).
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(
      f'{path}: not a PyTorch zip archive (legacy pre-1.6 torch.save files are not '
      'supported; re-save the state dict with a recent torch)'
    )
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pkl) != 1:
      raise ValueError(f'{path}: expected one <archive>/data.pkl in the zip, found {pkl}')
    root = pkl[0][: -len('data.pkl')]
    big_endian = False
    if root + 'byteorder' in names:
      big_endian = zf.read(root + 'byteorder').strip() == b'big'
    cache: dict[str, np.ndarray] = {}

    def load_storage(key: str, dtype) -> np.ndarray:
      if key not in cache:
        entry = f'{root}data/{key}'
        if entry not in names:
          raise ValueError(f'{path}: storage {entry} missing from the archive')
        dt = np.dtype(dtype)
        if big_endian and dt.itemsize > 1 and dt != np.dtype(ml_dtypes.bfloat16):
          dt = dt.newbyteorder('>')
        arr = np.frombuffer(zf.read(entry), dtype=dt)
        cache[key] = arr.astype(dt.newbyteorder('=')) if big_endian else arr
      return cache[key]

    with zf.open(pkl[0]) as f:
      obj = _RestrictedUnpickler(f, load_storage, path).load()
  out: dict[str, np.ndarray] = {}
  _collect_tensors(obj, '', out)
  if not out:
    raise ValueError(f'{path}: no tensors found in the archive')
  return out


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
_HF_IGNORED = re.compile(r'^(text_model|vision_model)\.embeddings\.position_ids$')
_OPENAI_IGNORED = re.compile(
  r'^(input_resolution|context_length|vocab_size)$|(^|\.)attn_mask$|\.num_batches_tracked$'
)


def _abstract_model(config, dtype, remat, attention_impl=None, residual_dtype=None):
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
  abstract = _abstract_model(config, dtype, remat, attention_impl, residual_dtype)
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


# --------------------------------------------------------------------------------------
# Front ends.
# --------------------------------------------------------------------------------------


def _hf_tensors(directory: str) -> dict[str, np.ndarray]:
  single = os.path.join(directory, 'model.safetensors')
  index = os.path.join(directory, 'model.safetensors.index.json')
  binary = os.path.join(directory, 'pytorch_model.bin')
  if os.path.exists(single):
    return read_safetensors(single)
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    out = {}
    for shard in shards:
      out.update(read_safetensors(os.path.join(directory, shard)))
    return out
  if os.path.exists(binary):
    return read_torch_archive(binary)
  raise FileNotFoundError(
    f'{directory}: has config.json but no model.safetensors, '
    'model.safetensors.index.json or pytorch_model.bin'
  )


def load_hf(
  directory: str,
  *,
  dtype=jnp.float32,
  remat: bool = False,
  attention_impl: str | None = None,
  residual_dtype=None,
) -> clip_lib.CLIP:
  """Loads a Hugging Face ``CLIPModel`` checkpoint directory."""
  cfg_path = os.path.join(directory, 'config.json')
  try:
    with open(cfg_path) as f:
      config_json = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{cfg_path}: cannot read the Hugging Face config: {e}') from e
  config = config_from_hf(config_json, cfg_path)
  tensors = _hf_tensors(directory)
  return convert_state_dict(
    tensors,
    config,
    hf_key_map(config),
    source=directory,
    ignored=_HF_IGNORED,
    dtype=dtype,
    remat=remat,
    attention_impl=attention_impl,
    residual_dtype=residual_dtype,
  )


def load_openai(
  path: str,
  *,
  dtype=jnp.float32,
  remat: bool = False,
  config: clip_lib.CLIPConfig | str | None = None,
  attention_impl: str | None = None,
  residual_dtype=None,
) -> clip_lib.CLIP:
  """Loads an OpenAI CLIP ``.pt`` (TorchScript archive or plain state dict).

  The config is inferred from the tensor shapes with 64-dimensional attention heads (true
  of every OpenAI model); pass ``config`` (a name or CLIPConfig) for other head sizes.
  """
  tensors = read_torch_archive(path)
  if config is None:
    config = config_from_openai(tensors, path)
  else:
    config = clip_lib.get_config(config)
  return convert_state_dict(
    tensors,
    config,
    openai_key_map(config),
    source=path,
    ignored=_OPENAI_IGNORED,
    dtype=dtype,
    remat=remat,
    attention_impl=attention_impl,
    residual_dtype=residual_dtype,
  )


def save(model: clip_lib.CLIP, path: str) -> None:
  """Writes ``model`` as ``path/clip_config.json`` + Orbax ``path/params`` (float32)."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, ORBAX_PARAMS_DIR)):
    raise FileExistsError(f'{path}: already holds a saved CLIP model')
  os.makedirs(path, exist_ok=True)
  state = nnx.state(model)  # parameters and, for ResNet towers, the batch-norm statistics
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, ORBAX_PARAMS_DIR), state)
    ckptr.wait_until_finished()
  meta = {'format': _FORMAT_TAG, 'config': dataclasses.asdict(model.config)}
  with open(os.path.join(path, ORBAX_CONFIG_FILE), 'w') as f:
    json.dump(meta, f, indent=2)


def load_orbax(
  path: str,
  *,
  dtype=jnp.float32,
  remat: bool = False,
  attention_impl: str | None = None,
  residual_dtype=None,
) -> clip_lib.CLIP:
  """Loads a model written by :func:`save`."""
  path = os.path.abspath(path)
  meta_path = os.path.join(path, ORBAX_CONFIG_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get('format') != _FORMAT_TAG:
    raise ValueError(f'{meta_path}: unknown format {meta.get("format")!r}')
  fields = {f.name for f in dataclasses.fields(clip_lib.CLIPConfig)}
  unknown = sorted(set(meta['config']) - fields)
  if unknown:
    raise ValueError(f'{meta_path}: unknown config keys {unknown}')
  config = clip_lib.CLIPConfig(**meta['config'])
  abstract = _abstract_model(config, dtype, remat, attention_impl, residual_dtype)
  graphdef, state = nnx.split(abstract)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(path, ORBAX_PARAMS_DIR), target)
  return nnx.merge(graphdef, restored)


_HUB_NAME = re.compile(r'^[A-Za-z0-9][\w.\-]*/[\w.\-]+$')
_HUB_FILES = [
  'config.json',
  'model.safetensors',
  'vocab.json',
  'merges.txt',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
]


def _hub_reachable(timeout: float = 5.0) -> bool:
  host = os.environ.get('HF_ENDPOINT', 'https://huggingface.co').split('://')[-1].split('/')[0]
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


def download_hub(name: str) -> str:
  """Downloads a hub checkpoint's config, weights and tokenizer files; returns the dir.

  Fails fast (no hang) with an error asking for a local directory when offline.
  """
  offline_msg = (
    f'{name!r} is not a local path, and it cannot be downloaded as a hub name: '
    'this machine is offline (or HF_HUB_OFFLINE is set). Pass a local directory instead, e.g. one written by '
    "transformers' CLIPModel.save_pretrained (config.json + model.safetensors), "
    'an OpenAI .pt file, or a directory saved with clip_weights.save.'
  )
  if os.environ.get('HF_HUB_OFFLINE', '0') not in ('', '0', 'false', 'False'):
    raise OSError(offline_msg)
  if not _hub_reachable():
    raise OSError(offline_msg)
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top

    return huggingface_hub.snapshot_download(name, allow_patterns=_HUB_FILES, etag_timeout=10)
  except Exception as e:  # network errors, missing repo, ...
    raise OSError(f'{offline_msg} (download failed: {e})') from e


def load(
  path_or_name: str,
  *,
  dtype=jnp.float32,
  remat: bool = False,
  config: clip_lib.CLIPConfig | str | None = None,
  attention_impl: str | None = None,
  residual_dtype=None,
) -> clip_lib.CLIP:
  """Dispatches on what ``path_or_name`` is; see the module docstring.

  ``config`` only applies to OpenAI ``.pt`` files (whose head count is not stored); the
  other formats carry their config.
  """
  path = os.fspath(path_or_name)
  if config is not None and not os.path.isfile(path):
    raise ValueError(f'{path}: config= is only accepted for OpenAI .pt files')
  kw = dict(dtype=dtype, remat=remat, attention_impl=attention_impl, residual_dtype=residual_dtype)
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, ORBAX_CONFIG_FILE)):
      return load_orbax(path, **kw)
    if os.path.exists(os.path.join(path, 'config.json')):
      return load_hf(path, **kw)
    raise FileNotFoundError(
      f'{path}: directory has neither config.json (Hugging Face CLIPModel) nor '
      f'{ORBAX_CONFIG_FILE} (saved with clip_weights.save)'
    )
  if os.path.isfile(path):
    return load_openai(path, config=config, **kw)
  if _HUB_NAME.match(path) and not path.startswith(('.', '/')):
    return load_hf(download_hub(path), **kw)
  raise FileNotFoundError(
    f'{path}: no such checkpoint file or directory (and not a hub '
    "name like 'openai/clip-vit-base-patch16')"
  )
