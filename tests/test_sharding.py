"""Mesh and sharding rules."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fognet_jax import sharding


def test_fsdp_spec_picks_largest_divisible_dim():
  assert sharding.fsdp_spec((768, 3072), 8, 16) == P(None, 'data')
  assert sharding.fsdp_spec((3072, 768), 8, 16) == P('data', None)
  assert sharding.fsdp_spec((77, 512), 8, 16) == P(None, 'data')   # 77 not divisible
  assert sharding.fsdp_spec((7, 9), 8, 16) == P()                  # nothing divisible
  assert sharding.fsdp_spec((512,), 8, 2 ** 14) == P()             # too small
  assert sharding.fsdp_spec((), 8, 0) == P()                       # scalar
  assert sharding.fsdp_spec((1024, 1024), 1, 16) == P()            # one device


def test_state_shardings_and_global_batch():
  mesh = sharding.make_mesh(8)
  tree = {'w': np.zeros((64, 32), np.float32), 'b': np.zeros((32,), np.float32),
          's': np.zeros((), np.int32)}
  rep = sharding.state_shardings(tree, mesh, fsdp=False)
  assert all(s.spec == P() for s in jax.tree.leaves(rep))
  fs = sharding.state_shardings(tree, mesh, fsdp=True, min_size=100)
  assert fs['w'].spec == P('data', None) and fs['b'].spec == P() and fs['s'].spec == P()
  placed = jax.device_put(tree, fs)
  assert sharding.describe(placed) == {'sharded': 1, 'replicated': 2}
  batch = sharding.put_global_batch({'x': np.arange(16 * 3).reshape(16, 3)}, mesh)
  assert batch['x'].sharding.spec == P('data')
  assert {s.data.shape for s in batch['x'].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(np.asarray(batch['x']), np.arange(48).reshape(16, 3))


def test_mesh_size_checks():
  assert sharding.make_mesh(-1).size == jax.device_count()
  assert sharding.make_mesh(2).size == 2
  with pytest.raises(ValueError, match='mesh.num_devices'):
    sharding.make_mesh(jax.device_count() + 1)
  assert sharding.local_batch_size(128) == 128


def test_distributed_auto_is_off_on_a_single_host(monkeypatch):
  for var in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
              'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(var, raising=False)
  assert sharding.maybe_initialize_distributed('auto') is False
  assert sharding.maybe_initialize_distributed(False) is False


def test_distributed_job_from_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  assert not sharding.maybe_initialize_distributed('auto') and not calls
  assert not sharding.maybe_initialize_distributed(False)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:12355')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  assert sharding.maybe_initialize_distributed('auto')
  assert calls == [{'num_processes': 2, 'process_id': 1}]
