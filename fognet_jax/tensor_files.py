"""Tensors read from checkpoint files without torch: safetensors and PyTorch zip archives.

:func:`read_safetensors` parses ``.safetensors`` files directly (JSON header + raw bytes).
:func:`read_torch_archive` reads ``torch.save`` and TorchScript zip archives (``.pt``,
``pytorch_model.bin``) *without torch and without running pickled code*: their ``data.pkl``
is a pickle, read by a restricted unpickler that only accepts ``collections.OrderedDict``,
the tensor/parameter rebuild functions of ``torch._utils`` (reimplemented here to produce
NumPy arrays), the ``torch.*Storage`` dtype markers, and ``__torch__.*`` TorchScript classes,
which become inert attribute containers (the archive's ``code/`` is never read or executed).
Any other global in the pickle raises :class:`UnsafeCheckpointError`. Tensor data are
trusted only to be numbers.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pickle
import struct
import zipfile
from typing import Any
from typing import Callable

import ml_dtypes
import numpy as np


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
