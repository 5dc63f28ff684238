"""Train step: sharding equivalence (1 vs 8 devices, DP and FSDP), accumulation, freezing,
schedule, NaN handling. Uses the toy model of train_toy.py (same interfaces as FogNet)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fognet_jax import checkpointing, sharding, train
import train_toy as toy


def _one_step(cfg, num_devices, *, fsdp=False, batch=None, steps=1):
  cfg.mesh.fsdp = fsdp
  mesh = sharding.make_mesh(num_devices)
  setup = toy.setup(cfg, mesh)
  schedule = train.make_schedule(cfg.train, setup.total_steps, setup.warmup_steps)
  model = toy.ToyModel(rngs=nnx.Rngs(0))
  graphdef, state, shardings, tx = train.build_state(cfg, mesh, model, schedule)
  step = train.make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings,
                               loss_fn=toy.toy_loss, schedule=schedule, seed=cfg.seed,
                               grad_accum_steps=cfg.train.grad_accum_steps,
                               freeze_text=cfg.train.freeze_text)
  tokens = jax.device_put(jnp.asarray(toy.prompt_tokens()), sharding.replicated(mesh))
  metrics = None
  for i in range(steps):
    b = batch if batch is not None else toy.make_batch(0, i, cfg.train.batch_size)
    state, metrics = step(state, sharding.put_global_batch(b, mesh), tokens)
  return state, jax.device_get(metrics)


def _max_rel_diff(a, b):
  diffs = jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y))) /
                         max(np.max(np.abs(np.asarray(y))), 1e-12)), a, b)
  return max(jax.tree.leaves(diffs))


def test_eight_devices_data_parallel_and_fsdp_match_one_device():
  assert jax.device_count() == 8
  ref, ref_m = _one_step(toy.config(), 1, steps=2)
  dp, dp_m = _one_step(toy.config(), 8, steps=2)
  fsdp, fsdp_m = _one_step(toy.config(), 8, fsdp=True, steps=2)
  # FSDP really shards: the (192, 16) frame kernel is split over the 8 devices.
  kernel = fsdp.params['frame']['kernel'][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('data', None)
  assert {s.data.shape for s in kernel.addressable_shards} == {(24, 16)}
  rel_dp = _max_rel_diff(dp.params, ref.params)
  rel_fsdp = _max_rel_diff(fsdp.params, ref.params)
  rel_opt = _max_rel_diff(fsdp.opt_state, ref.opt_state)
  print(f'max relative parameter difference vs 1 device: data-parallel {rel_dp:.2e}, '
        f'FSDP {rel_fsdp:.2e} (optimizer state {rel_opt:.2e})')
  assert rel_dp < 1e-5 and rel_fsdp < 1e-5 and rel_opt < 1e-5
  np.testing.assert_allclose(dp_m['loss'], ref_m['loss'], rtol=1e-5)
  np.testing.assert_allclose(fsdp_m['loss'], ref_m['loss'], rtol=1e-5)
  # The step changed the parameters (the comparison is not between two copies of the init).
  init, _ = _one_step(toy.config(learning_rate=1e-12), 1)
  assert _max_rel_diff(ref.params, init.params) > 1e-3


def test_gradient_accumulation_keeps_the_effective_batch():
  # The toy loss is a per-sample mean, so 4 micro-batches of 4 = one batch of 16 exactly.
  ref, ref_m = _one_step(toy.config(), 8)
  acc, acc_m = _one_step(toy.config(grad_accum_steps=2), 8)
  one_dev_acc, _ = _one_step(toy.config(grad_accum_steps=4), 1)
  assert _max_rel_diff(acc.params, ref.params) < 1e-5
  assert _max_rel_diff(one_dev_acc.params, ref.params) < 1e-5
  np.testing.assert_allclose(acc_m['loss'], ref_m['loss'], rtol=1e-5)


def test_freeze_text_leaves_text_parameters_unchanged():
  cfg = toy.config(freeze_text=True)
  init, _ = _one_step(toy.config(learning_rate=1e-12), 1)
  state, _ = _one_step(cfg, 1)
  for name in ('text', 'text_proj'):
    assert _max_rel_diff(state.params[name], init.params[name]) == 0.0
  assert _max_rel_diff(state.params['frame'], init.params['frame']) > 1e-4


def test_freeze_pattern_matching_nothing_is_an_error():
  cfg = toy.config(freeze_text=True, freeze_text_pattern='no_such_module')
  with pytest.raises(ValueError, match='freeze_text_pattern'):
    _one_step(cfg, 1)


def test_schedule_is_linear_warmup_then_cosine():
  cfg = toy.config(learning_rate=2.0, end_lr_ratio=0.1)
  sched = train.make_schedule(cfg.train, total_steps=110, warmup_steps=10)
  steps = np.arange(0, 111)
  got = np.array([float(sched(s)) for s in steps])
  frac = np.clip((steps - 10) / 100, 0, 1)
  expect = np.where(steps < 10, 2.0 * steps / 10,
                    0.2 + (2.0 - 0.2) * 0.5 * (1 + np.cos(np.pi * frac)))
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)


def test_epochs_resolve_to_steps():
  cfg = toy.config(num_train_steps=-1, num_epochs=2.5, warmup_epochs=1.0)
  assert train._resolve_steps(cfg, 160) == (10, 25, 10)  # 160 / 16 = 10 steps per epoch


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = toy.config(num_train_steps=10, checkpoint_every_steps=2, log_every_steps=1,
                   async_checkpointing=False)
  mesh = sharding.make_mesh(8)
  with pytest.raises(train.NonFiniteLossError, match=r'step 6.*last good checkpoint is step 4'):
    train.train(cfg, str(tmp_path), setup=toy.setup(cfg, mesh),
                model=toy.ToyModel(rngs=nnx.Rngs(0)), loss_fn=toy.toy_loss,
                batches=lambda s: toy.batches(0, 16, s, nan_at=5))
  ck = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  assert ck.all_steps() == [2, 4]
  _, template, _, _ = train.build_state(cfg, mesh, toy.ToyModel(rngs=nnx.Rngs(0)),
                                        train.make_schedule(cfg.train, 10, 0))
  restored = ck.restore(template)
  ck.close()
  assert int(restored.step) == 4
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.params))
