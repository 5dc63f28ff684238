"""Train step: sharding equivalence (1 vs 8 devices, DP and FSDP), accumulation, freezing,
schedule, NaN handling. Uses the toy model of train_toy.py (same interfaces as FogNet)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as toy
from flax import nnx

from fognet_jax import augment
from fognet_jax import checkpointing
from fognet_jax import losses
from fognet_jax import metrics
from fognet_jax import optim
from fognet_jax import sharding
from fognet_jax import train


def _one_step(cfg, num_devices, *, fsdp=False, batch=None, steps=1):
  cfg.mesh.fsdp = fsdp
  mesh = sharding.make_mesh(num_devices)
  counts = toy.steps(cfg)
  schedule = optim.make_schedule(cfg.train, counts.total, counts.warmup)
  model = toy.ToyModel(rngs=nnx.Rngs(0))
  graphdef, state, shardings, tx = train.build_state(cfg, mesh, model, schedule)
  step = train.make_train_step(
    graphdef,
    tx,
    mesh=mesh,
    state_shardings=shardings,
    loss_fn=toy.toy_loss,
    schedule=schedule,
    seed=cfg.seed,
    grad_accum_steps=cfg.train.grad_accum_steps,
    freeze_text=cfg.train.freeze_text,
  )
  tokens = jax.device_put(jnp.asarray(toy.prompt_tokens()), sharding.replicated(mesh))
  metrics = None
  for i in range(steps):
    b = batch if batch is not None else toy.make_batch(0, i, cfg.train.batch_size)
    state, metrics = step(state, sharding.put_global_batch(b, mesh), tokens)
  return state, jax.device_get(metrics)


def _max_rel_diff(a, b):
  diffs = jax.tree.map(
    lambda x, y: float(
      np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(np.asarray(y))), 1e-12)
    ),
    a,
    b,
  )
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
  print(
    f'max relative parameter difference vs 1 device: data-parallel {rel_dp:.2e}, '
    f'FSDP {rel_fsdp:.2e} (optimizer state {rel_opt:.2e})'
  )
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
  one_dev_acc, one_dev_m = _one_step(toy.config(grad_accum_steps=4), 1)
  assert _max_rel_diff(acc.params, ref.params) < 1e-5
  assert _max_rel_diff(one_dev_acc.params, ref.params) < 1e-5
  np.testing.assert_allclose(acc_m['loss'], ref_m['loss'], rtol=1e-5)
  # Adam's first step is about lr * sign(g): the parameters cannot show the gradient's
  # scale, the reported gradient norm does (a sum instead of a mean is 2x or 4x off).
  np.testing.assert_allclose(acc_m['grad_norm'], ref_m['grad_norm'], rtol=1e-5)
  np.testing.assert_allclose(one_dev_m['grad_norm'], ref_m['grad_norm'], rtol=1e-5)
  np.testing.assert_allclose(one_dev_m['loss'], ref_m['loss'], rtol=1e-5)


def _uint8_pair_batch(batch_size: int, seed: int = 0):
  """(uint8 frames + per-pair colour chains, the same pairs as host floats: augment's reference)."""
  rng = np.random.default_rng(seed)
  aug = toy.config().data.augment
  shape = (batch_size, toy.FRAMES, toy.SIZE, toy.SIZE, 3)
  clean = rng.integers(0, 256, shape, dtype=np.uint8)
  foggy = (clean // 2 + 100).astype(np.uint8)
  cjs = [augment.sample_color_jitter(rng, aug) for _ in range(batch_size)]
  labels = rng.integers(0, toy.NUM_CLASSES, batch_size).astype(np.int32)
  u8 = {
    'clean': clean,
    'foggy': foggy,
    'label': labels,
    'color': np.stack([augment.color_affines(c) for c in cjs]),
  }

  def host(x):
    return np.stack([augment.color_and_normalize(f, c) for f, c in zip(x, cjs)])

  return u8, {'clean': host(clean), 'foggy': host(foggy), 'label': labels}


def test_uint8_frames_and_colour_chains_train_like_host_floats():
  """Pixels made model input in the step (`pixels_on_device`): the same step as the host's
  normalised floats, on 8 devices (the chains split with the batch) and with accumulation."""
  u8, host = _uint8_pair_batch(16)
  ref, ref_m = _one_step(toy.config(), 1, batch=host)
  for devices, accum in ((8, 1), (8, 2), (1, 4)):
    got, got_m = _one_step(toy.config(grad_accum_steps=accum), devices, batch=u8)
    assert _max_rel_diff(got.params, ref.params) < 1e-5, (devices, accum)
    np.testing.assert_allclose(got_m['loss'], ref_m['loss'], rtol=1e-5)
  # The colour chains are used: without them the same uint8 frames train differently.
  plain, plain_m = _one_step(toy.config(), 1, batch={k: v for k, v in u8.items() if k != 'color'})
  assert abs(float(plain_m['loss']) - float(ref_m['loss'])) > 1e-4


def test_the_training_loop_sends_the_colour_chains(tmp_path):
  """train.train on uint8 + colour-chain batches = on the same pairs as host floats (the loop
  passes 'color' on to the step; extra keys stay on the host)."""
  cfg = toy.config(
    num_train_steps=3, checkpoint_every_steps=100, log_every_steps=1, async_checkpointing=False
  )
  mesh = sharding.make_mesh(8)
  pairs = [_uint8_pair_batch(16, seed=i) for i in range(3)]
  finals = []
  for name, which in (('u8', 0), ('host', 1)):

    def batches(start, which=which):
      for u8_host in pairs[start:]:
        yield dict(u8_host[which], note=np.array(['not for the device'] * 16))

    _, state, _ = train.train(
      cfg,
      str(tmp_path / name),
      **toy.run_parts(cfg, mesh),
      model=toy.ToyModel(rngs=nnx.Rngs(0)),
      loss_fn=toy.toy_loss,
      batches=batches,
    )
    finals.append(state.params)
  assert _max_rel_diff(finals[0], finals[1]) < 1e-5


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
  sched = optim.make_schedule(cfg.train, total_steps=110, warmup_steps=10)
  steps = np.arange(0, 111)
  got = np.array([float(sched(s)) for s in steps])
  frac = np.clip((steps - 10) / 100, 0, 1)
  expect = np.where(
    steps < 10, 2.0 * steps / 10, 0.2 + (2.0 - 0.2) * 0.5 * (1 + np.cos(np.pi * frac))
  )
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)


def test_epochs_resolve_to_steps():
  cfg = toy.config(num_train_steps=-1, num_epochs=2.5, warmup_epochs=1.0)
  assert train.step_counts(cfg.train, 160) == (10, 25, 10)  # 160 / 16 = 10 steps per epoch


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = toy.config(
    num_train_steps=10, checkpoint_every_steps=2, log_every_steps=1, async_checkpointing=False
  )
  mesh = sharding.make_mesh(8)
  with pytest.raises(train.NonFiniteLossError, match=r'step 6.*last good checkpoint is step 4'):
    train.train(
      cfg,
      str(tmp_path),
      **toy.run_parts(cfg, mesh),
      model=toy.ToyModel(rngs=nnx.Rngs(0)),
      loss_fn=toy.toy_loss,
      batches=lambda s: toy.batches(0, 16, s, nan_at=5),
    )
  ck = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  assert ck.all_steps() == [2, 4]
  _, template, _, _ = train.build_state(
    cfg, mesh, toy.ToyModel(rngs=nnx.Rngs(0)), optim.make_schedule(cfg.train, 10, 0)
  )
  restored = ck.restore(template)
  ck.close()
  assert int(restored.step) == 4
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.params))


def _events_of_a_run(tmp_path, monkeypatch, batches):
  """Runs the toy for 6 steps (log every 2, save at the end); returns the order in which steps
  were dispatched ('step') and metrics read back ('read')."""
  cfg = toy.config(
    num_train_steps=6, log_every_steps=2, checkpoint_every_steps=100, async_checkpointing=False
  )
  events = []
  make = train.make_train_step

  def recording_make(*args, **kwargs):
    step_fn = make(*args, **kwargs)

    def step(*a):
      out = step_fn(*a)
      events.append('step')
      return out

    return step

  get = jax.device_get
  monkeypatch.setattr(train, 'make_train_step', recording_make)

  def reading(x):
    if isinstance(x, dict) and 'loss' in x:  # a step's metrics (others read parameters)
      events.append('read')
    return get(x)

  monkeypatch.setattr(train.jax, 'device_get', reading)
  train.train(
    cfg,
    str(tmp_path),
    **toy.run_parts(cfg, sharding.make_mesh(1)),
    model=toy.ToyModel(rngs=nnx.Rngs(0)),
    loss_fn=toy.toy_loss,
    batches=batches,
  )
  return events


def test_logged_metrics_are_read_after_the_next_step_is_dispatched(tmp_path, monkeypatch):
  events = _events_of_a_run(tmp_path, monkeypatch, lambda s: toy.batches(0, 16, s))
  reads = [events[:i].count('step') for i, e in enumerate(events) if e == 'read']
  # step 2's metrics after step 3 is dispatched, step 4's after step 5; step 6 (saved) at once
  assert reads[:3] == [3, 5, 6], events
  history = metrics.read_history(str(tmp_path))
  assert [h['step'] for h in history] == [2, 4, 6]
  assert all(np.isfinite(h['loss']) and h['clip_pairs_per_sec'] > 0 for h in history)


def test_a_logged_step_is_written_when_the_run_fails_before_the_next(tmp_path, monkeypatch):
  def failing(start):
    for i, b in enumerate(toy.batches(0, 16, start), start):
      if i == 4:  # the batch of step 5: step 4's metrics are still on the devices
        raise OSError('disk gone')
      yield b

  with pytest.raises(OSError, match='disk gone'):
    _events_of_a_run(tmp_path, monkeypatch, failing)
  assert [h['step'] for h in metrics.read_history(str(tmp_path))] == [2, 4]


# ------------------------------------------------------------------ gradients themselves


class ToyTwoStream(toy.ToyModel):
  """The toy encoders with FogNet's output dict, so the real loss (eqs. 8-11) applies."""

  def _frames(self, x):
    b, t = x.shape[:2]
    return self.frame(x.reshape(b, t, -1))  # (B, T, D)

  def train_outputs(self, clean, foggy, text_emb):
    fc, ff = self._frames(clean), self._frames(foggy)
    pool = lambda f: self.visual_head(jax.nn.gelu(jnp.mean(f, axis=1)))
    return {
      'video_f': pool(ff),
      'video_c': pool(fc),
      'frames_f': ff,
      'frames_c': fc,
      'text': text_emb,
      'logit_scale': self.logit_scale[...],
    }


def _contrastive_config(**train_overrides):
  cfg = toy.config(**train_overrides)
  cfg.model.arch = 'fognet'
  cfg.model.csa.enabled = True
  cfg.loss.lambda_clean, cfg.loss.beta_temp, cfg.loss.temp_temperature = 0.7, 0.3, 0.5
  return cfg


def _first_template(tokens, key):
  del key
  return tokens[0]


def _sgd_step(cfg, num_devices, batch, *, fsdp=False):
  """One train step with SGD(lr=1): params before - params after = the step's gradient."""
  import optax

  mesh = sharding.make_mesh(num_devices)
  model = ToyTwoStream(rngs=nnx.Rngs(0))
  graphdef, params0, rest0 = train.split_model(model)
  params0 = jax.tree.map(np.asarray, params0)
  tx = optax.sgd(1.0)
  _, state = train.init_state(model, tx)
  state, shardings = train.shard_state(state, mesh, fsdp=fsdp, min_size=16)
  step = train.make_train_step(
    graphdef,
    tx,
    mesh=mesh,
    state_shardings=shardings,
    loss_fn=losses.make_loss_fn(cfg),
    schedule=lambda s: 1.0,
    seed=cfg.seed,
    grad_accum_steps=cfg.train.grad_accum_steps,
    prompt_sampler=_first_template,
  )
  tokens = jax.device_put(jnp.asarray(toy.prompt_tokens()), sharding.replicated(mesh))
  new, metrics = step(state, sharding.put_global_batch(batch, mesh), tokens)
  grads = jax.tree.map(
    lambda a, b: np.asarray(a) - np.asarray(b), params0, jax.device_get(new.params)
  )
  return graphdef, params0, rest0, grads, jax.device_get(metrics)


def _reference_grads(graphdef, params, rest, cfg, batch, accum):
  """Gradient of the mean over micro-batches of the loss of each micro-batch (row
  r = m * accum + a goes to micro-batch a), on one device, without the train step."""
  loss_fn = losses.make_loss_fn(cfg)
  text_tokens = jnp.asarray(toy.prompt_tokens()[0])

  def total(params):
    model = nnx.merge(graphdef, params, rest)
    text = model.encode_text(text_tokens)
    vals = []
    for a in range(accum):
      out = model.train_outputs(
        jnp.asarray(batch['clean'][a::accum]), jnp.asarray(batch['foggy'][a::accum]), text
      )
      vals.append(loss_fn(out, jnp.asarray(batch['label'][a::accum]))[0])
    return sum(vals) / accum, vals

  (loss, parts), grads = jax.value_and_grad(total, has_aux=True)(params)
  return float(loss), [float(p) for p in parts], jax.tree.map(np.asarray, grads)


def _global_norm(tree):
  return float(
    np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))
  )


@pytest.mark.parametrize('num_devices,fsdp,accum', [(1, False, 4), (8, False, 2), (8, True, 2)])
def test_accumulated_gradient_of_the_contrastive_loss(num_devices, fsdp, accum):
  """With the real (batch-contrastive) loss, accumulation changes the gradient in a known
  way: it is the mean of the micro-batch gradients, not the full-batch gradient."""
  cfg = _contrastive_config(grad_accum_steps=accum)
  batch = toy.make_batch(0, 0, 16)
  graphdef, params0, rest0, grads, metrics = _sgd_step(cfg, num_devices, batch, fsdp=fsdp)
  loss, parts, ref = _reference_grads(graphdef, params0, rest0, cfg, batch, accum)
  _, _, full = _reference_grads(graphdef, params0, rest0, cfg, batch, 1)
  scale = _global_norm(ref)
  err = _global_norm(jax.tree.map(lambda a, b: a - b, grads, ref)) / scale
  # The known difference: micro-batch gradients are not the full-batch gradient.
  gap = _global_norm(jax.tree.map(lambda a, b: a - b, full, ref)) / scale
  print(
    f'accum={accum} on {num_devices} devices (fsdp={fsdp}): |step grad - reference| / '
    f'|reference| = {err:.2e}; the full-batch gradient is {gap:.2e} away'
  )
  assert gap > 0.05
  assert err < 1e-4
  np.testing.assert_allclose(metrics['grad_norm'], scale, rtol=1e-4)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  # Micro-batch losses differ from each other, so the mean is not any one of them.
  assert max(parts) - min(parts) > 1e-3
  for key in ('loss_f', 'loss_c', 'loss_temp'):
    assert float(metrics[key]) > 0, key


# ------------------------------------------------------------------ FSDP checkpoint restore


def test_fsdp_state_is_restored_sharded_and_resumes_exactly(tmp_path):
  cfg = toy.config(
    num_train_steps=4, checkpoint_every_steps=2, log_every_steps=1, async_checkpointing=False
  )
  cfg.mesh.fsdp = True
  mesh = sharding.make_mesh(8)
  starts = []

  def run(workdir, sigterm_at=None):
    def batches(start):  # a SIGTERM while batch `sigterm_at` is read: a preemption
      starts.append(start)
      for i, b in enumerate(toy.batches(0, 16, start), start):
        if i == sigterm_at:
          os.kill(os.getpid(), signal.SIGTERM)
        yield b

    return train.train(
      cfg,
      workdir,
      **toy.run_parts(cfg, mesh),
      model=toy.ToyModel(rngs=nnx.Rngs(0)),
      loss_fn=toy.toy_loss,
      batches=batches,
    )[1]

  ref = run(str(tmp_path / 'ref'))
  half = run(str(tmp_path / 'run'), sigterm_at=1)
  assert int(half.step) == 2
  ck = checkpointing.Checkpointer(str(tmp_path / 'run'), async_save=False)
  assert ck.all_steps() == [2]
  _, template, shardings, _ = train.build_state(
    cfg, mesh, toy.ToyModel(rngs=nnx.Rngs(5)), optim.make_schedule(cfg.train, 4, 0)
  )
  restored = ck.restore(template)
  ck.close()
  assert int(restored.step) == 2
  kernel = restored.params['frame']['kernel'][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('data', None)
  assert {s.data.shape for s in kernel.addressable_shards} == {(24, 16)}
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
    assert got.sharding.is_equivalent_to(want, got.ndim)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(half)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # Resuming the sharded state continues exactly where the uninterrupted run went.
  final = run(str(tmp_path / 'run'))
  assert starts == [0, 0, 2]
  assert int(final.step) == 4
  for got, want in zip(jax.tree.leaves(final.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert final.params['frame']['kernel'][...].sharding.spec == jax.sharding.PartitionSpec(
    'data', None
  )


def test_prompt_templates_are_redrawn_every_step():
  """The step's randomness is folded with the step number: the same parameters and batch
  give a different loss at another step (other templates drawn) and the same loss at the
  same step."""
  cfg = toy.config()
  mesh = sharding.make_mesh(1)
  schedule = optim.make_schedule(cfg.train, 10, 0)
  graphdef, state, shardings, tx = train.build_state(
    cfg, mesh, toy.ToyModel(rngs=nnx.Rngs(0)), schedule
  )
  step = train.make_train_step(
    graphdef,
    tx,
    mesh=mesh,
    state_shardings=shardings,
    loss_fn=toy.toy_loss,
    schedule=schedule,
    seed=cfg.seed,
  )
  tokens = jax.device_put(jnp.asarray(toy.prompt_tokens()), sharding.replicated(mesh))
  batch = toy.make_batch(0, 0, 16)
  host = jax.device_get(state)

  def loss_at(n):
    s = jax.device_put(host.replace(step=jnp.asarray(n, jnp.int32)), shardings)
    return float(step(s, sharding.put_global_batch(batch, mesh), tokens)[1]['loss'])

  losses = [loss_at(n) for n in range(6)]
  assert len({round(x, 6) for x in losses}) >= 3, losses
  assert loss_at(4) == losses[4]


def test_fusion_module_learning_rate_ratio():
  """train.fusion_lr_ratio: parameters under `fusion_pattern` (the temporal transformer) move
  at ratio x the learning rate, the others at 1x: AdamW's first step is lr * sign(g)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  params = {'temporal': {'w': jnp.ones((2, 2))}, 'visual': {'w': jnp.ones((2, 2))}}
  grads = jax.tree.map(lambda x: 0.5 * x, params)

  def first_update(ratio, pattern=r'(^|/)temporal(/|$)'):
    tcfg = ml_collections.ConfigDict(
      dict(
        b1=0.9,
        b2=0.98,
        eps=1e-8,
        weight_decay=0.0,
        grad_clip_norm=0.0,
        freeze_text=False,
        freeze_text_pattern=r'(^|/)text(/|$)',
        fusion_lr_ratio=ratio,
        fusion_pattern=pattern,
      )
    )
    tx = optim.make_optimizer(tcfg, params, lambda step: 1e-3)
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree.map(np.asarray, updates)

  u = first_update(10.0)
  np.testing.assert_allclose(u['temporal']['w'], -1e-2, rtol=1e-5)
  np.testing.assert_allclose(u['visual']['w'], -1e-3, rtol=1e-5)
  u1 = first_update(1.0)
  np.testing.assert_allclose(u1['temporal']['w'], -1e-3, rtol=1e-5)
  with pytest.raises(ValueError, match='fusion_pattern'):
    first_update(10.0, pattern='no_such_module')
