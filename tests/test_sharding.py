"""Mesh and sharding rules."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fognet_jax import sharding


def test_fsdp_spec_picks_largest_divisible_dim():
  assert sharding.fsdp_spec((768, 3072), 8, 16) == P(None, 'data')
  assert sharding.fsdp_spec((3072, 768), 8, 16) == P('data', None)
  assert sharding.fsdp_spec((77, 512), 8, 16) == P(None, 'data')  # 77 not divisible
  assert sharding.fsdp_spec((7, 9), 8, 16) == P()  # nothing divisible
  assert sharding.fsdp_spec((512,), 8, 2**14) == P()  # too small
  assert sharding.fsdp_spec((), 8, 0) == P()  # scalar
  assert sharding.fsdp_spec((1024, 1024), 1, 16) == P()  # one device


def test_state_shardings_and_global_batch():
  mesh = sharding.make_mesh(8)
  tree = {
    'w': np.zeros((64, 32), np.float32),
    'b': np.zeros((32,), np.float32),
    's': np.zeros((), np.int32),
  }
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
  for var in (
    'JAX_COORDINATOR_ADDRESS',
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
  ):
    monkeypatch.delenv(var, raising=False)
  assert sharding.maybe_initialize_distributed('auto') is False
  assert sharding.maybe_initialize_distributed(False) is False


def test_distributed_job_from_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  for name in (
    'JAX_COORDINATOR_ADDRESS',
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
  ):
    monkeypatch.delenv(name, raising=False)
  assert not sharding.maybe_initialize_distributed('auto') and not calls
  assert not sharding.maybe_initialize_distributed(False)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:12355')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  assert sharding.maybe_initialize_distributed('auto')
  assert calls == [{'num_processes': 2, 'process_id': 1}]


# ------------------------------------------------------------------ the compiled FogNet step
# FogNet's real train step on the 8 CPU devices, compiled (not run): what moves between
# devices. Activations must stay split along the batch, as the data is: with FSDP only
# parameters and their gradients travel, and a clean/foggy pair never leaves its device.


def _tiny_fognet_config(fsdp: bool):
  from fognet_jax import config_lib

  cfg = config_lib.load_config('configs/synthetic.py:scratch')
  o = cfg.model.clip_overrides
  o.vision_layers, o.text_layers, o.image_size, o.patch_size = 1, 1, 32, 8
  cfg.data.image_size, cfg.data.num_frames = 32, 2
  cfg.mesh.fsdp = fsdp
  cfg.perf.fsdp_min_size = 2**10  # the tiny towers' matrices are sharded too
  cfg.train.batch_size = 16
  return cfg


@pytest.fixture(scope='module')
def compiled_steps():
  """{'dp' | 'fsdp': (compiled step, largest parameter's element count)} on 8 CPU devices."""
  from fognet_jax.tools import tpu_fit

  out = {}
  for name in ('dp', 'fsdp'):
    cfg = _tiny_fognet_config(fsdp=name == 'fsdp')
    step, args = tpu_fit.build_step(cfg, jax.devices()[:8], num_classes=4, prompt_len=8)
    largest = max(int(np.prod(x.shape)) for x in jax.tree.leaves(args[0].params))
    out[name] = (step.lower(*args).compile(), largest)
  return out


def _moved(compiled):
  from fognet_jax.tools import tpu_fit

  return tpu_fit.collectives(compiled.as_text())


def test_fsdp_moves_parameters_not_activations_and_needs_no_more_memory(compiled_steps):
  fsdp, largest = compiled_steps['fsdp']
  moved = _moved(fsdp)
  assert any(kind == 'all-gather' for kind, _ in moved)  # FSDP gathers its parameters
  # Activations of the global batch are 2B*T = 64 frames of 17 tokens (1088 rows of 64 to
  # 256 features, 70k to 280k elements); no parameter has more than `largest` (16k).
  too_big = [
    (kind, shape)
    for kind, shapes in moved
    for shape in shapes
    if np.prod(shape, dtype=np.int64) > largest
  ]
  assert not too_big, f'activation-sized collectives in the FSDP step: {too_big}'
  dp, _ = compiled_steps['dp']
  total = lambda m: (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  print(
    f'bytes per device: data-parallel {total(dp.memory_analysis())}, '
    f'FSDP {total(fsdp.memory_analysis())}'
  )
  assert total(fsdp.memory_analysis()) <= total(dp.memory_analysis())


@pytest.mark.parametrize('name', ['dp', 'fsdp'])
def test_clean_foggy_pairs_stay_on_their_device(compiled_steps, name):
  moved = _moved(compiled_steps[name][0])
  shuffles = [
    (kind, shapes) for kind, shapes in moved if kind in ('all-to-all', 'collective-permute')
  ]
  assert not shuffles, f'frames or embeddings move between devices: {shuffles}'
