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
a pickle. They are read *without torch and without running pickled code*
(:mod:`fognet_jax.tensor_files`: a restricted unpickler); a pickle that refers to anything
but tensors raises :class:`UnsafeCheckpointError`. Safetensors files are parsed directly.
Tensor data are trusted only to be numbers. The conversion into the Flax model (key maps,
config inference) is :mod:`fognet_jax.clip_convert`.

Mismatches raise :class:`CheckpointMismatchError` listing *all* missing keys, unexpected
keys and wrong shapes at once; no parameter is ever left at its random initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fognet_jax import clip_convert
from fognet_jax import tensor_files
from fognet_jax.models import clip as clip_lib

ORBAX_CONFIG_FILE = 'clip_config.json'
ORBAX_PARAMS_DIR = 'params'
_FORMAT_TAG = 'fognet_jax.clip/v1'

# The errors of :func:`load`.
CheckpointMismatchError = clip_convert.CheckpointMismatchError
UnsafeCheckpointError = tensor_files.UnsafeCheckpointError


# --------------------------------------------------------------------------------------
# Front ends.
# --------------------------------------------------------------------------------------


def _hf_tensors(directory: str) -> dict[str, np.ndarray]:
  single = os.path.join(directory, 'model.safetensors')
  index = os.path.join(directory, 'model.safetensors.index.json')
  binary = os.path.join(directory, 'pytorch_model.bin')
  if os.path.exists(single):
    return tensor_files.read_safetensors(single)
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    out = {}
    for shard in shards:
      out.update(tensor_files.read_safetensors(os.path.join(directory, shard)))
    return out
  if os.path.exists(binary):
    return tensor_files.read_torch_archive(binary)
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
  config = clip_convert.config_from_hf(config_json, cfg_path)
  tensors = _hf_tensors(directory)
  return clip_convert.convert_state_dict(
    tensors,
    config,
    clip_convert.hf_key_map(config),
    source=directory,
    ignored=clip_convert.HF_IGNORED,
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
  tensors = tensor_files.read_torch_archive(path)
  if config is None:
    config = clip_convert.config_from_openai(tensors, path)
  else:
    config = clip_lib.get_config(config)
  return clip_convert.convert_state_dict(
    tensors,
    config,
    clip_convert.openai_key_map(config),
    source=path,
    ignored=clip_convert.OPENAI_IGNORED,
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
  abstract = clip_convert.abstract_model(config, dtype, remat, attention_impl, residual_dtype)
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
