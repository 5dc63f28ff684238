"""Training: train state, the jitted sharded train step, and the training loop.

The model is an NNX module split into a static graph definition and two state pytrees
(`nnx.Param` parameters and every other variable). The train step is a pure function of
`TrainState` under one `jax.jit` with explicit `NamedSharding`s over a 1-D `data` mesh:

  * batch split over the devices (data parallelism); parameters and AdamW moments
    replicated, or split over the same axis with `config.mesh.fsdp=True` (FSDP-style);
  * gradient accumulation: the global batch is split into `train.grad_accum_steps`
    micro-batches scanned in sequence, gradients averaged, one optimizer update per step;
  * the step's randomness (prompt templates, any dropout) is `fold_in(key(seed), step)`;
  * the state argument is donated.

Class prompts: one of the K templates is drawn per class at every step
(`prompts.sample_train_prompts`) and encoded by the text tower inside the step, so the text
tower is fine-tuned with the rest (ActionCLIP-style). `train.freeze_text=True` stops gradients
at the text embeddings and gives the text parameters zero updates.

`fognet_jax.main` assembles a run (mesh, data, model, loss, prompts) and passes the pieces to
`train`; nothing here reads the dataset or builds the model itself. The optimizer and the
learning-rate schedule come from `fognet_jax.optim`.

Note on accumulation: FogNet's losses are contrastive within a batch (T2V normalises over the
batch's videos), so with accumulation those normalisations run over each micro-batch; the
gradient of every step still averages the whole effective batch.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Mapping
from typing import NamedTuple
from typing import Optional

import einops
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fognet_jax import checkpointing
from fognet_jax import losses
from fognet_jax import metrics as metrics_lib
from fognet_jax import optim
from fognet_jax import pixels
from fognet_jax import prompts
from fognet_jax import sharding as sharding_lib
from fognet_jax.models import clip

# (tokens (K, C, L), key) -> (C, L); a sampler with the attribute `per_sample = True` is
# called as (tokens, key, labels (B,)) -> (B, L) (one prompt per sample, ActionCLIP's loss).
PromptSampler = Callable[..., jax.Array]


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss is NaN or Inf; the last good checkpoint stays on disk."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (saved whole in checkpoints)."""

  step: jax.Array  # int32 scalar: number of optimizer updates done
  params: nnx.State  # nnx.Param variables (fp32)
  rest: nnx.State  # every other variable of the model (e.g. RNG counters)
  opt_state: Any  # optax state, same tree as params where it mirrors them


# ------------------------------------------------------------------------------ state


def split_model(model: nnx.Module):
  """(graphdef, params, rest) of an NNX module."""
  return nnx.split(model, nnx.Param, ...)


def init_state(model: nnx.Module, tx: optax.GradientTransformation):
  graphdef, params, rest = split_model(model)
  state = TrainState(
    step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params)
  )
  return graphdef, state


def shard_state(state: TrainState, mesh, *, fsdp: bool, min_size: int = 2**14):
  """Places `state` on the mesh; returns (state, shardings)."""
  shardings = sharding_lib.state_shardings(state, mesh, fsdp=fsdp, min_size=min_size)
  return jax.device_put(state, shardings), shardings


# ------------------------------------------------------------------------------ train step


def gather_params(params, shardings, mesh):
  """FSDP's all-gather of the parameters, explicit: `params` constrained to replicated for the
  model (the cotangents too: the transpose of a sharding constraint is the same constraint).

  Without it XLA's partitioner is free to keep a sharded weight split and split the matmul
  along the weight's sharded dimension instead; on a TPU it did, and then all-reduced
  activations of the whole global batch on every device (2-3x data parallelism's memory).
  A replicated weight leaves the batch split as the only split of the activations. The
  gradients go back to `shardings` after the backward pass (`make_train_step`), where the
  partitioner turns the all-reduce and slice into a reduce-scatter. Parameters that are
  replicated already pass through unchanged.
  """
  if all(s.is_fully_replicated for s in jax.tree.leaves(shardings)):
    return params
  full = jax.tree.map(lambda _: sharding_lib.replicated(mesh), shardings)
  return jax.lax.with_sharding_constraint(params, full)


# The keys of a training batch that the step reads ('color': per-pair colour chains that go
# with uint8 frames, `pixels.train_inputs`).
BATCH_KEYS = ('clean', 'foggy', 'label', 'color')


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  mesh,
  state_shardings,
  loss_fn: losses.LossFn,
  schedule,
  seed: int,
  grad_accum_steps: int = 1,
  freeze_text: bool = False,
  prompt_sampler: PromptSampler = prompts.sample_train_prompts,
):
  """Returns `step(state, batch, prompt_tokens) -> (state, metrics)`, jitted and sharded.

  batch: {'clean', 'foggy': (B, T, H, W, 3), 'label': (B,)} global arrays split over `data`:
  float frames normalised on the host, or uint8 frames with optional 'color' (B, 5, 3, 4)
  chains, turned into model input in the step (`pixels.train_inputs`).
  prompt_tokens: (K, C, L) int32 replicated. The state is donated.
  A `prompt_sampler` marked `per_sample` draws one prompt per sample from the batch labels
  ((B, L), split into micro-batches with the batch); the model then sees (B, D) text
  embeddings instead of (C, D).
  """
  per_sample = bool(getattr(prompt_sampler, 'per_sample', False))
  accum = int(grad_accum_steps)
  base_key = jax.random.key(seed)
  data_sharding = sharding_lib.batch_sharding(mesh)
  rep = sharding_lib.replicated(mesh)
  micro_sharding = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(None, sharding_lib.DATA_AXIS)
  )

  def micro_loss(params, rest, micro, text_tokens):
    params = gather_params(params, state_shardings.params, mesh)  # FSDP: gathered here
    model = nnx.merge(graphdef, params, rest)
    if text_tokens is None:  # per-sample prompts travel with the (micro-)batch
      text_tokens = micro['text_tokens']
    text_emb = model.encode_text(text_tokens)  # (C, D)
    if freeze_text:
      text_emb = jax.lax.stop_gradient(text_emb)
    clean, foggy = pixels.train_inputs(micro)  # uint8 + colour chains, or host-normalised
    outputs = model.train_outputs(clean, foggy, text_emb)
    loss, metrics = loss_fn(outputs, micro['label'])
    _, _, new_rest = split_model(model)
    return loss, (dict(metrics), new_rest)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step_fn(state: TrainState, batch, prompt_tokens):
    key = jax.random.fold_in(base_key, state.step)
    if per_sample:
      batch = dict(
        batch, text_tokens=prompt_sampler(prompt_tokens, jax.random.fold_in(key, 0), batch['label'])
      )  # (B, L)
      text_tokens = None
    else:
      text_tokens = prompt_sampler(prompt_tokens, jax.random.fold_in(key, 0))  # (C, L)
    if accum == 1:
      (loss, (metrics, rest)), grads = grad_fn(state.params, state.rest, batch, text_tokens)
      grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
    else:
      # Row r = m * accum + a goes to micro-batch a, so each micro-batch stays spread over
      # all devices (the batch is split over devices in contiguous blocks of rows).
      micro = jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
          einops.rearrange(x, '(m a) ... -> a m ...', a=accum), micro_sharding
        ),
        batch,
      )

      def body(carry, mb):
        g_sum, rest, _ = carry
        (loss, (metrics, rest)), g = grad_fn(state.params, rest, mb, text_tokens)
        g = jax.lax.with_sharding_constraint(g, state_shardings.params)
        g_sum = jax.tree.map(jnp.add, g_sum, g)
        return (g_sum, rest, None), (loss, metrics)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (g_sum, rest, _), (micro_losses, metrics) = jax.lax.scan(
        body, (zeros, state.rest, None), micro
      )
      grads = jax.tree.map(lambda g: g / accum, g_sum)
      loss = jnp.mean(micro_losses)
      metrics = jax.tree.map(jnp.mean, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics['loss'] = loss
    metrics['learning_rate'] = schedule(state.step)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['param_norm'] = optax.tree.norm(params)
    new_state = TrainState(step=state.step + 1, params=params, rest=rest, opt_state=opt_state)
    return new_state, metrics

  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, data_sharding, rep),
    out_shardings=(state_shardings, rep),
    donate_argnums=(0,),
  )


# ------------------------------------------------------------------------------ the loop


class StepCounts(NamedTuple):
  """Length of a run in optimizer steps."""

  per_epoch: int
  total: int
  warmup: int


def step_counts(tcfg: ml_collections.ConfigDict, num_train_examples: int) -> StepCounts:
  """Steps per epoch, total steps (`num_train_steps`, else `num_epochs`) and warm-up steps."""
  per_epoch = max(num_train_examples // tcfg.batch_size, 1)
  if tcfg.num_train_steps > 0:
    total = int(tcfg.num_train_steps)
  else:
    total = max(int(math.ceil(tcfg.num_epochs * per_epoch)), 1)
  return StepCounts(per_epoch, total, int(round(tcfg.warmup_epochs * per_epoch)))


def build_state(config: ml_collections.ConfigDict, mesh, model: nnx.Module, schedule):
  """(graphdef, state placed on `mesh`, state shardings, optimizer) for `model`."""
  _, params, _ = split_model(model)
  tx = optim.make_optimizer(config.train, params, schedule)
  graphdef, state = init_state(model, tx)
  state, shardings = shard_state(
    state, mesh, fsdp=config.mesh.fsdp, min_size=config.perf.fsdp_min_size
  )
  return graphdef, state, shardings, tx


def _check_finite(step: int, values: Mapping[str, float], workdir: str, ckpt) -> None:
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    raise NonFiniteLossError(
      f'non-finite training metrics at step {step}: {bad}. Training stopped; the last good '
      f'checkpoint is step {ckpt.latest_step()} in '
      f'{os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}. Try a lower '
      'config.train.learning_rate, config.train.grad_clip_norm > 0, or '
      "config.model.dtype='float32'."
    )


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  mesh,
  model: nnx.Module,
  loss_fn: losses.LossFn,
  batches: Callable[[int], Iterator[dict]],
  prompt_tokens,
  steps: StepCounts,
  prompt_sampler: PromptSampler = prompts.sample_train_prompts,
  on_start: Optional[Callable[[int], None]] = None,
) -> tuple[Any, TrainState, dict]:
  """Trains `model`, resuming from the latest checkpoint in `workdir`.

  Args:
    config: the run's config (`train` and `mesh` blocks, `seed`; written to config.json).
    mesh: the device mesh (`sharding.make_mesh`).
    model: the initial model (its parameters are replaced by a checkpoint's when resuming).
    loss_fn: `(model.train_outputs(...), labels) -> (loss, metrics)`.
    batches: `start_step -> iterator` of this process's rows of the global batches
      `{'clean', 'foggy', 'label'}` (and 'color' with uint8 frames, see `pixels`), starting
      at batch `start_step`; other keys are not sent to the devices.
    prompt_tokens: (K, C, L) int32 class prompts, one row per template.
    steps: the run's length (`step_counts`).
    prompt_sampler: the per-step prompt draw (`make_train_step`).
    on_start: called with the first step once the state is restored from the latest checkpoint
      or initialised (and `config.json` written), before the first step.

  Returns:
    (graphdef, final state, the metrics of the last logged step). A SIGTERM, a Ctrl-C or a
    preemption notice ends the run early, after saving a checkpoint.

  Raises:
    checkpointing.WorkdirLockedError: another training run holds `workdir`.
    checkpointing.CheckpointError: `workdir` has checkpoints and none of them restores.
    checkpointing.CheckpointSaveError: a checkpoint could not be written.
  """
  lock = checkpointing.WorkdirLock(workdir).acquire()  # a second run on `workdir` stops here
  try:
    return _train(
      config,
      workdir,
      mesh=mesh,
      model=model,
      loss_fn=loss_fn,
      batches=batches,
      prompt_tokens=prompt_tokens,
      steps=steps,
      prompt_sampler=prompt_sampler,
      on_start=on_start,
    )
  finally:
    lock.release()


def _train(
  config, workdir, *, mesh, model, loss_fn, batches, prompt_tokens, steps, prompt_sampler, on_start
):
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  schedule = optim.make_schedule(t, steps.total, steps.warmup)
  graphdef, state, shardings, tx = build_state(config, mesh, model, schedule)
  del model
  metrics_lib.log_info(
    'Mesh %s, %d parameters, sharding %s, %d steps (%d per epoch, %d warm-up)',
    dict(mesh.shape),
    clip.count_params(state.params),
    sharding_lib.describe(state.params),
    steps.total,
    steps.per_epoch,
    steps.warmup,
  )

  ckpt = checkpointing.Checkpointer(
    workdir,
    keep=t.keep_checkpoints,
    every_steps=t.checkpoint_every_steps,
    async_save=config.perf.async_checkpointing,
  )
  start_step = 0
  if ckpt.latest_step() is not None:
    try:
      state = ckpt.restore(state)
    except BaseException:
      ckpt.close()
      raise
    start_step = int(jax.device_get(state.step))
    metrics_lib.log_info('Resuming at step %d', start_step)
  # Only now: a run that cannot restore its checkpoints leaves the config they were written with.
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  if on_start is not None:
    on_start(start_step)
  writer = metrics_lib.MetricWriter(workdir)
  writer.truncate_after(start_step)

  step_fn = make_train_step(
    graphdef,
    tx,
    mesh=mesh,
    state_shardings=shardings,
    loss_fn=loss_fn,
    schedule=schedule,
    seed=config.seed,
    grad_accum_steps=t.grad_accum_steps,
    freeze_text=t.freeze_text,
    prompt_sampler=prompt_sampler,
  )
  prompt_tokens = jax.device_put(
    jnp.asarray(prompt_tokens, jnp.int32), sharding_lib.replicated(mesh)
  )
  it = batches(start_step)
  progress = metrics_lib.Progress(steps.total, start_step)
  stop = checkpointing.StopSignal()
  last_values: dict = {}
  t_log, step_log = time.time(), start_step
  step = start_step
  # A logging step's metrics are read after the next step is dispatched, so that reading them
  # does not leave the devices idle while the host prepares that step; a saving step's are read
  # at once (a non-finite step is never saved).
  pending = None  # (step, its metrics on the devices), to log

  def read(at: int, on_device, log: bool) -> dict:
    nonlocal t_log, step_log
    values = {k: float(v) for k, v in jax.device_get(on_device).items()}
    _check_finite(at, values, workdir, ckpt)
    if log:
      dt = max(time.time() - t_log, 1e-9)
      values['steps_per_sec'] = (at - step_log) / dt
      values['clip_pairs_per_sec'] = values['steps_per_sec'] * t.batch_size
      values['epoch'] = at / steps.per_epoch
      t_log, step_log = time.time(), at
      writer.write_scalars(at, values)
      progress.update(at, values)
    return values

  try:
    while step < steps.total:
      batch = next(it)
      batch = sharding_lib.put_global_batch({k: batch[k] for k in BATCH_KEYS if k in batch}, mesh)
      state, step_metrics = step_fn(state, batch, prompt_tokens)
      step += 1
      ckpt.poll()  # logs a finished background save; raises if it failed
      if pending is not None:
        (at, on_device), pending = pending, None
        last_values = read(at, on_device, log=True)
      preempted = stop.triggered or ckpt.reached_preemption(step)
      log_now = step % t.log_every_steps == 0 or step == steps.total
      save_now = ckpt.should_save(step) or step == steps.total or preempted
      if save_now:
        last_values = read(step, step_metrics, log=log_now)
        ckpt.save(step, state)
      elif log_now:
        pending = (step, step_metrics)
      else:
        progress.update(step)
      if preempted:
        metrics_lib.log_info('Stopping at step %d after a preemption signal.', step)
        break
  except BaseException:
    if pending is not None:  # the last logging step's metrics, unless they are what failed
      try:
        read(*pending, log=True)
      except Exception:  # pylint: disable=broad-except
        pass
    raise
  finally:
    progress.close()
    stop.restore()
    writer.close()
    ckpt.close()  # waits for the last save; raises if it failed
  return graphdef, state, last_values
