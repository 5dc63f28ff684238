"""Device mesh and shardings: data parallelism, optionally FSDP-style parameter sharding.

One mesh axis, `data`, spans every device of every process. Batches are split over it along
their leading dimension. Parameters and optimizer state are replicated by default; with
`config.mesh.fsdp=True` each array with at least `config.perf.fsdp_min_size` elements is split
over the
data axis along its largest dimension divisible by the axis size (XLA inserts the all-gathers
and reduce-scatters), which is what lets ViT-L/14 and large batches fit.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def maybe_initialize_distributed(mode: Any = 'auto') -> bool:
  """Calls `jax.distributed.initialize()` where the platform needs it.

  mode 'auto' initialises when the environment describes a multi-process job (a coordinator
  address, SLURM, or a multi-host TPU slice); True always; False never. Must run before any
  other JAX call. Returns whether it initialised.

  Where no cluster environment names the processes (CPU or GPU hosts started by hand), the
  variables JAX_COORDINATOR_ADDRESS (`host:port` of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID describe the job; JAX reads the first itself, the other two are passed here.
  """
  if mode in (False, 'false', 'False', 'no', None):
    return False
  env = os.environ
  if mode == 'auto':
    multi = (
      'JAX_COORDINATOR_ADDRESS' in env
      or int(env.get('JAX_NUM_PROCESSES', '1')) > 1
      or int(env.get('SLURM_NTASKS', '1')) > 1
      or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
      or len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1
    )
    if not multi:
      return False
  kwargs = {}
  if env.get('JAX_NUM_PROCESSES'):
    kwargs['num_processes'] = int(env['JAX_NUM_PROCESSES'])
  if env.get('JAX_PROCESS_ID'):
    kwargs['process_id'] = int(env['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(num_devices: int = -1, devices=None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (-1: all, across processes) of
  `devices` (default `jax.devices()`; e.g. a TPU topology's compile-only devices)."""
  devices = list(jax.devices() if devices is None else devices)
  if num_devices > 0:
    if num_devices > len(devices):
      raise ValueError(f'config.mesh.num_devices={num_devices} but only {len(devices)} devices')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int) -> P:
  """PartitionSpec sharding the largest dim divisible by `axis_size` (replicated otherwise)."""
  if axis_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [i for i, n in enumerate(shape) if n % axis_size == 0 and n >= axis_size]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda i: (shape[i], -i))
  spec = [None] * len(shape)
  spec[dim] = DATA_AXIS
  return P(*spec)


def state_shardings(tree: Any, mesh: Mesh, *, fsdp: bool, min_size: int = 2**14) -> Any:
  """A pytree of NamedShardings matching `tree` (arrays or ShapeDtypeStructs).

  Replicated unless `fsdp`; with `fsdp`, the rule of `fsdp_spec` by shape, so a parameter and
  its Adam moments always get the same sharding.
  """
  axis_size = mesh.shape[DATA_AXIS]

  def one(x):
    shape = tuple(getattr(x, 'shape', ()))
    if not fsdp:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(shape, axis_size, min_size))

  return jax.tree.map(one, tree)


def put_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's numpy batch into global arrays split over the data axis.

  Each process passes its own rows (the per-process part of the global batch); the global
  array's leading dimension is the sum over processes.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )


def describe(tree: Any) -> dict[str, int]:
  """Counts of sharded vs replicated arrays (for logging)."""
  counts = {'sharded': 0, 'replicated': 0}
  for x in jax.tree.leaves(tree):
    spec = getattr(getattr(x, 'sharding', None), 'spec', P())
    counts['sharded' if any(s is not None for s in spec) else 'replicated'] += 1
  return counts


def local_batch_size(global_batch: int) -> int:
  """Rows each process reads per step."""
  if global_batch % jax.process_count():
    raise ValueError(f'batch {global_batch} not divisible by {jax.process_count()} processes')
  return global_batch // jax.process_count()
