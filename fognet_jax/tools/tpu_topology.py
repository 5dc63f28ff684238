"""TPU topologies to compile for without a TPU: libtpu, devices, HBM, the paper's recipe.

Where libtpu (the XLA:TPU compiler, not a dependency of the package) is found
(:func:`find_libtpu`), the compile-only TPU devices of a topology given by libtpu's or Cloud's
name (:func:`topology_devices`, ``TOPOLOGIES``), the HBM of one device (:func:`hbm_bytes`),
and the remat and gradient accumulation of the paper's recipe per TPU (:func:`paper_recipe`),
as ``python -m fognet_jax.tools.tpu_fit`` compiled them.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import math
import os
import sys
import tempfile
from typing import Any
from typing import Optional

from jax.experimental import topologies

LIBTPU_VERSION = '0.0.42.1'  # what `jax[tpu]` pins for jax 0.10.2 (the Makefile installs it)

# HBM of one JAX device, GiB, matched on `device_kind` (lower case), first match wins:
# v2 / v3 devices are TensorCores (16 / 32 GiB per chip of two); v4 and v5p devices are
# megacore chips; v5e ('TPU v5 lite') and v6e ('TPU v6 lite') chips have one TensorCore.
HBM_GIB = (
  ('tpu v2', 8),
  ('tpu v3', 16),
  ('tpu v4', 32),
  ('tpu v5 lite', 16),
  ('tpu v5e', 16),
  ('tpu v5p', 95),
  ('tpu v5', 95),
  ('tpu v6 lite', 32),
  ('tpu v6e', 32),
)

# Cloud / Colab slice names -> libtpu topology names.
TOPOLOGIES = {
  'v2-8': 'v2:2x2',
  'v3-8': 'v3:2x2',
  'v4-8': 'v4:2x2x1',
  'v5p-8': 'v5p:2x2x1',
  'v5e-1': 'v5e:1x1',
  'v5e-4': 'v5e:2x2',
  'v5e-8': 'v5e:2x4',
  'v6e-1': 'v6e:1x1',
  'v6e-4': 'v6e:2x2',
  'v6e-8': 'v6e:2x4',
}
_MEGACORE = ('v4', 'v5p')  # one JAX device per chip of two TensorCores

GIB = 2**30

# The paper's recipe (configs/fogact.py: ViT-B/16, bf16, 8 x 224², global batch 128) on one
# TPU host, from tpu_fit's compiles (benchmarks/RESULTS.md, "TPU"): per device kind,
# (remat, clips per device per micro-batch) that compiled within the HBM with room to spare.
PAPER_RECIPE_FITS = {
  'TPU v2': (True, 16),  # v2-8: 8 cores of 8 GiB; 6.95 GB per core
  'TPU v5 lite': (True, 32),  # v5e: 16 GiB; 13.6 GB (v5e-1, 4 micro-batches), 11.6 (v5e-4)
  'TPU v6 lite': (True, 64),  # v6e: 32 GiB; 23.5 GB (v6e-1, 2 micro-batches)
  'TPU v4': (True, 32),  # v4 megacore: 32 GiB; 13.47 GB (v4-8); without remat at most 20
}


class ToolError(Exception):
  """A user error of the tpu_fit tool (bad flag, no libtpu); printed as one `error:` line."""


# ------------------------------------------------------------------------------ libtpu


def _venv_libtpu() -> str:
  return os.path.join(sys.prefix, 'libtpu', 'libtpu', 'libtpu.so')


def find_libtpu(path: Optional[str] = None) -> str:
  """The libtpu.so to compile with: `path`, TPU_LIBRARY_PATH, the `libtpu` package, or
  `<venv>/libtpu` (where `make venv` installs it). Raises ToolError saying how to install it."""
  if path:
    if os.path.isdir(path):
      path = os.path.join(path, 'libtpu.so')
    if not os.path.isfile(path):
      raise ToolError(f'--libtpu={path}: no such file')
    return os.path.abspath(path)
  env = os.environ.get('TPU_LIBRARY_PATH')
  if env:
    if not os.path.isfile(env):
      raise ToolError(f'TPU_LIBRARY_PATH={env}: no such file')
    return env
  spec = importlib.util.find_spec('libtpu')  # finds the package without importing it
  if spec is not None and spec.origin:
    candidate = os.path.join(os.path.dirname(spec.origin), 'libtpu.so')
    if os.path.isfile(candidate):
      return candidate
  if os.path.isfile(_venv_libtpu()):
    return _venv_libtpu()
  raise ToolError(
    'no libtpu (the XLA:TPU compiler) found: run `make venv`, or install the version jax '
    f'pins with `pip install --target {os.path.join(sys.prefix, "libtpu")} '
    f'libtpu=={LIBTPU_VERSION}` (or `pip install libtpu=={LIBTPU_VERSION}`), or pass '
    '--libtpu=PATH/libtpu.so or set TPU_LIBRARY_PATH'
  )


def libtpu_version(path: str) -> str:
  """The version in the dist-info beside a libtpu package's libtpu.so, else 'unknown'."""
  found = glob.glob(os.path.join(os.path.dirname(os.path.dirname(path)), 'libtpu-*.dist-info'))
  if found:
    return os.path.basename(found[0])[len('libtpu-') : -len('.dist-info')]
  return 'unknown'


@contextlib.contextmanager
def _stderr_to(file):
  """Sends file descriptor 2 (libtpu's start-up lines about a missing TPU) to `file`."""
  sys.stderr.flush()
  saved = os.dup(2)
  os.dup2(file.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def topology_name(topology: str) -> str:
  return TOPOLOGIES.get(topology.lower(), topology)


def topology_devices(topology: str, libtpu: str) -> list:
  """The compile-only TPU devices of `topology` ('v5e:1x1', 'v2-8', ...)."""
  name = topology_name(topology)
  version, _, shape = name.partition(':')
  try:
    dims = [int(x) for x in shape.split('x')]
  except ValueError:
    dims = []
  if not dims or any(d < 1 for d in dims):
    raise ToolError(
      f'--topology={topology}: expected a libtpu name like v5e:2x2 or v4:2x2x1, '
      f'or one of {", ".join(TOPOLOGIES)}'
    )
  kwargs: dict[str, Any] = {}
  if math.prod(dims) < 4:  # libtpu's default host is 2x2x1 chips
    kwargs['chips_per_host_bounds'] = tuple(dims + [1] * (3 - len(dims)))
  if version.lower() in _MEGACORE:
    kwargs['chip_config_name'] = 'megacore'
  os.environ['TPU_LIBRARY_PATH'] = libtpu  # read when the plugin is loaded (once per process)
  # Compiling needs no TPU to itself: several processes may compile at once (libtpu otherwise
  # takes /tmp/libtpu_lockfile and refuses a second process).
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  with tempfile.TemporaryFile('w+') as log:
    try:
      with _stderr_to(log):
        desc = topologies.get_topology_desc(platform='tpu', topology_name=name, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise ToolError(f'--topology={topology}: libtpu {libtpu}: {one_line(e)}') from e
  return list(desc.devices)


def hbm_bytes(device_kind: str) -> Optional[int]:
  kind = device_kind.lower()
  for key, gib in HBM_GIB:
    if key in kind:
      return gib * GIB
  return None


def one_line(error: Any, limit: int = 300) -> str:
  """The first line of an error message (XLA's carry a source-location trace after it)."""
  text = str(error).strip().splitlines()
  line = ' '.join(text[0].split()) if text else type(error).__name__
  return line if len(line) <= limit else line[: limit - 3] + '...'


def paper_recipe(
  device_kind: str, num_devices: int, batch: int = 128
) -> Optional[tuple[int, bool, int]]:
  """(global batch, remat, grad_accum_steps) of the paper's recipe on `num_devices` devices
  of `device_kind` (`jax.devices()[0].device_kind`): the fewest micro-batches whose clips per
  device fit (`PAPER_RECIPE_FITS`); None for a kind not compiled for."""
  if device_kind not in PAPER_RECIPE_FITS:
    return None
  remat, per_device = PAPER_RECIPE_FITS[device_kind]
  accum = 1
  while batch % (num_devices * accum) or batch // (num_devices * accum) > per_device:
    accum += 1
    if accum > batch:
      return None
  return batch, remat, accum
