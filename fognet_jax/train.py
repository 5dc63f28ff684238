"""Training: train state, the jitted sharded train step, and the train-and-evaluate loop.

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

Note on accumulation: FogNet's losses are contrastive within a batch (T2V normalises over the
batch's videos), so with accumulation those normalisations run over each micro-batch; the
gradient of every step still averages the whole effective batch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import time
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import logging
import einops
import flax
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fognet_jax import checkpointing
from fognet_jax import config_lib
from fognet_jax import metrics as metrics_lib
from fognet_jax import sharding as sharding_lib

# (outputs, labels) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
# (tokens (K, C, L), key) -> (C, L)
PromptSampler = Callable[[jax.Array, jax.Array], jax.Array]


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss is NaN or Inf; the last good checkpoint stays on disk."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (saved whole in checkpoints)."""
  step: jax.Array          # int32 scalar: number of optimizer updates done
  params: nnx.State        # nnx.Param variables (fp32)
  rest: nnx.State          # every other variable of the model (e.g. RNG counters)
  opt_state: Any           # optax state, same tree as params where it mirrors them


# ------------------------------------------------------------------------------ optimizer

def path_str(path) -> str:
  """'a/b/0/c' from a jax key path (attribute, dict and sequence keys)."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(p for p in parts if p != 'value')


def trainable_labels(params: nnx.State, freeze_pattern: Optional[str]) -> Any:
  """'train' / 'frozen' per parameter (frozen: path matches `freeze_pattern`)."""
  regex = re.compile(freeze_pattern) if freeze_pattern else None
  return jax.tree_util.tree_map_with_path(
      lambda p, _: 'frozen' if regex is not None and regex.search(path_str(p)) else 'train',
      params)


def make_schedule(tcfg: ml_collections.ConfigDict, total_steps: int, warmup_steps: int):
  """Linear warm-up from 0 to the peak, then cosine annealing to `end_lr_ratio * peak`."""
  total_steps = max(int(total_steps), 1)
  warmup_steps = int(min(max(warmup_steps, 0), total_steps - 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tcfg.learning_rate, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=tcfg.learning_rate * tcfg.end_lr_ratio)


def make_optimizer(tcfg: ml_collections.ConfigDict, params: nnx.State, schedule) -> optax.GradientTransformation:
  """AdamW (no decay on biases, norms, scalars), optional clipping, optional frozen text."""
  decay_mask = jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)
  tx = optax.adamw(schedule, b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.eps,
                   weight_decay=tcfg.weight_decay, mask=decay_mask)
  if tcfg.grad_clip_norm and tcfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(tcfg.grad_clip_norm), tx)
  if tcfg.freeze_text:
    labels = trainable_labels(params, tcfg.freeze_text_pattern)
    n_frozen = sum(1 for l in jax.tree.leaves(labels) if l == 'frozen')
    if n_frozen == 0:
      raise ValueError('config.train.freeze_text=True but config.train.freeze_text_pattern '
                       f'{tcfg.freeze_text_pattern!r} matches no parameter')
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx


# ------------------------------------------------------------------------------ state

def split_model(model: nnx.Module):
  """(graphdef, params, rest) of an NNX module."""
  return nnx.split(model, nnx.Param, ...)


def init_state(model: nnx.Module, tx: optax.GradientTransformation):
  graphdef, params, rest = split_model(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                     opt_state=tx.init(params))
  return graphdef, state


def shard_state(state: TrainState, mesh, *, fsdp: bool, min_size: int = 2 ** 14):
  """Places `state` on the mesh; returns (state, shardings)."""
  shardings = sharding_lib.state_shardings(state, mesh, fsdp=fsdp, min_size=min_size)
  return jax.device_put(state, shardings), shardings


# ------------------------------------------------------------------------------ train step

def default_prompt_sampler(tokens: jax.Array, key: jax.Array) -> jax.Array:
  from fognet_jax import prompts  # pylint: disable=g-import-not-at-top
  return prompts.sample_train_prompts(tokens, key)


def _set_mode(model: nnx.Module, train: bool) -> None:
  fn = getattr(model, 'train' if train else 'eval', None)
  if callable(fn):
    fn()


def make_train_step(graphdef, tx: optax.GradientTransformation, *, mesh, state_shardings,
                    loss_fn: LossFn, schedule, seed: int, grad_accum_steps: int = 1,
                    freeze_text: bool = False,
                    prompt_sampler: PromptSampler = default_prompt_sampler):
  """Returns `step(state, batch, prompt_tokens) -> (state, metrics)`, jitted and sharded.

  batch: {'clean', 'foggy': (B, T, H, W, 3), 'label': (B,)} global arrays split over `data`.
  prompt_tokens: (K, C, L) int32 replicated. The state is donated.
  """
  accum = int(grad_accum_steps)
  base_key = jax.random.key(seed)
  data_sharding = sharding_lib.batch_sharding(mesh)
  rep = sharding_lib.replicated(mesh)
  micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding_lib.DATA_AXIS))

  def micro_loss(params, rest, micro, text_tokens):
    model = nnx.merge(graphdef, params, rest)
    _set_mode(model, True)
    text_emb = model.encode_text(text_tokens)  # (C, D)
    if freeze_text:
      text_emb = jax.lax.stop_gradient(text_emb)
    outputs = model.train_outputs(micro['clean'], micro['foggy'], text_emb, train=True)
    loss, metrics = loss_fn(outputs, micro['label'])
    _, _, new_rest = split_model(model)
    return loss, (dict(metrics), new_rest)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step_fn(state: TrainState, batch, prompt_tokens):
    key = jax.random.fold_in(base_key, state.step)
    text_tokens = prompt_sampler(prompt_tokens, jax.random.fold_in(key, 0))  # (C, L)
    if accum == 1:
      (loss, (metrics, rest)), grads = grad_fn(state.params, state.rest, batch, text_tokens)
    else:
      # Row r = m * accum + a goes to micro-batch a, so each micro-batch stays spread over
      # all devices (the batch is split over devices in contiguous blocks of rows).
      micro = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(
              einops.rearrange(x, '(m a) ... -> a m ...', a=accum), micro_sharding), batch)

      def body(carry, mb):
        g_sum, rest, _ = carry
        (loss, (metrics, rest)), g = grad_fn(state.params, rest, mb, text_tokens)
        g_sum = jax.tree.map(jnp.add, g_sum, g)
        return (g_sum, rest, None), (loss, metrics)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (g_sum, rest, _), (losses, metrics) = jax.lax.scan(body, (zeros, state.rest, None), micro)
      grads = jax.tree.map(lambda g: g / accum, g_sum)
      loss = jnp.mean(losses)
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

  return jax.jit(step_fn,
                 in_shardings=(state_shardings, data_sharding, rep),
                 out_shardings=(state_shardings, rep),
                 donate_argnums=(0,))


# ------------------------------------------------------------------------------ the job

@dataclasses.dataclass
class Setup:
  """What a run needs besides its state: built once from the config."""
  config: ml_collections.ConfigDict
  mesh: Any
  info: Any                    # records.prepare(...) result
  class_names: list
  prompt_tokens: np.ndarray    # (K, C, L)
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int


def _resolve_steps(config, num_train_examples: int) -> tuple[int, int, int]:
  t = config.train
  steps_per_epoch = max(num_train_examples // t.batch_size, 1)
  if t.num_train_steps and t.num_train_steps > 0:
    total = int(t.num_train_steps)
  else:
    total = max(int(math.ceil(t.num_epochs * steps_per_epoch)), 1)
  warmup = int(round(t.warmup_epochs * steps_per_epoch))
  return steps_per_epoch, total, warmup


def setup_run(config: ml_collections.ConfigDict) -> Setup:
  """Distributed init, mesh, validation, dataset preparation and prompt tokens."""
  sharding_lib.maybe_initialize_distributed(config.get('distributed', {}).get('initialize', 'auto'))
  mesh = sharding_lib.make_mesh(config.mesh.get('num_devices', -1))
  config_lib.validate(config, num_devices=mesh.size, num_processes=jax.process_count())
  from fognet_jax import prompts  # pylint: disable=g-import-not-at-top
  from fognet_jax import records  # pylint: disable=g-import-not-at-top
  from fognet_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from fognet_jax.models import fognet  # pylint: disable=g-import-not-at-top
  fognet.validate_config(config.model)
  info = records.prepare(config.data)
  class_names = list(info.class_names)
  tok_cfg = config.model.tokenizer
  tok = tokenizer_lib.get_tokenizer(tok_cfg.kind, path=tok_cfg.get('path'))
  prompt_tokens = prompts.tokenize_classes(class_names, tok)
  if config.train.get('num_templates', -1) > 0:
    prompt_tokens = prompt_tokens[:config.train.num_templates]  # (K, C, L)
  # (K, C, L) -> (K, C, L'): the text tower is causal, positions after every prompt's
  # end-of-text token change nothing and are not computed.
  prompt_tokens = prompts.trim_context(prompt_tokens)
  spe, total, warmup = _resolve_steps(config, int(info.num_examples[config.data.get('train_split', 'train')]))
  return Setup(config, mesh, info, class_names, prompt_tokens, spe, total, warmup)


def create_model(config: ml_collections.ConfigDict) -> nnx.Module:
  from fognet_jax.models import fognet  # pylint: disable=g-import-not-at-top
  return fognet.create_model(config.model, rngs=nnx.Rngs(config.seed))


def make_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
  from fognet_jax import losses  # pylint: disable=g-import-not-at-top
  return functools.partial(losses.fognet_loss, loss_cfg=config.loss, model_cfg=config.model)


def build_state(config, mesh, model: nnx.Module, schedule):
  """(graphdef, sharded state, state shardings, tx) for `model`."""
  graphdef, params, _ = split_model(model)
  tx = make_optimizer(config.train, params, schedule)
  graphdef, state = init_state(model, tx)
  state, shardings = shard_state(state, mesh, fsdp=config.mesh.fsdp,
                                 min_size=config.mesh.get('fsdp_min_size', 2 ** 14))
  return graphdef, state, shardings, tx


def train_iterator(config, *, start_step: int) -> Iterator[dict]:
  from fognet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.train_iterator(
      config.data, batch_size=sharding_lib.local_batch_size(config.train.batch_size),
      seed=config.seed, start_step=start_step)


def _check_finite(step: int, values: Mapping[str, float], workdir: str, ckpt) -> None:
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    last = ckpt.latest_step() if ckpt is not None else None
    raise NonFiniteLossError(
        f'non-finite training metrics at step {step}: {bad}. Training stopped; the last good '
        f'checkpoint is step {last} in {os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}. '
        'Try a lower config.train.learning_rate, config.train.grad_clip_norm > 0, or '
        "config.model.dtype='float32'.")


def train(config: ml_collections.ConfigDict, workdir: str, *, setup: Optional[Setup] = None,
          model: Optional[nnx.Module] = None, loss_fn: Optional[LossFn] = None,
          batches: Optional[Callable[[int], Iterator[dict]]] = None,
          prompt_sampler: PromptSampler = default_prompt_sampler,
          stop_after: Optional[int] = None) -> tuple[Any, TrainState, dict]:
  """Trains (resuming from the latest checkpoint in `workdir`); returns (graphdef, state, last metrics).

  `model`, `loss_fn` and `batches(start_step)` default to FogNet, its loss and the input
  pipeline; tests substitute small ones with the same interfaces. `stop_after` ends the run
  after that step (the schedule still spans the whole run), as a preemption would.
  """
  setup = setup or setup_run(config)
  mesh, t = setup.mesh, config.train
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  schedule = make_schedule(t, setup.total_steps, setup.warmup_steps)
  model = model if model is not None else create_model(config)
  graphdef, state, shardings, tx = build_state(config, mesh, model, schedule)
  del model
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  metrics_lib.log_info('Mesh %s, %d parameters, sharding %s, %d steps (%d per epoch, %d warm-up)',
                       dict(mesh.shape), n_params, sharding_lib.describe(state.params),
                       setup.total_steps, setup.steps_per_epoch, setup.warmup_steps)

  ckpt = checkpointing.Checkpointer(workdir, keep=t.keep_checkpoints,
                                    every_steps=t.checkpoint_every_steps,
                                    async_save=t.get('async_checkpointing', True))
  start_step = 0
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    start_step = int(jax.device_get(state.step))
    metrics_lib.log_info('Resuming at step %d', start_step)
  writer = metrics_lib.MetricWriter(workdir)
  writer.truncate_after(start_step)

  step_fn = make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings,
                            loss_fn=loss_fn or make_loss_fn(config), schedule=schedule,
                            seed=config.seed, grad_accum_steps=t.grad_accum_steps,
                            freeze_text=t.freeze_text, prompt_sampler=prompt_sampler)
  prompt_tokens = jax.device_put(jnp.asarray(setup.prompt_tokens, jnp.int32),
                                 sharding_lib.replicated(mesh))
  it = batches(start_step) if batches is not None else train_iterator(config, start_step=start_step)
  end_step = setup.total_steps if stop_after is None else min(stop_after, setup.total_steps)
  progress = metrics_lib.Progress(setup.total_steps, start_step)
  sigterm = checkpointing.SigtermFlag()
  last_values: dict = {}
  t_log, step_log = time.time(), start_step
  step = start_step
  try:
    while step < end_step:
      batch = next(it)
      batch = sharding_lib.put_global_batch(
          {k: batch[k] for k in ('clean', 'foggy', 'label')}, mesh)
      state, step_metrics = step_fn(state, batch, prompt_tokens)
      step += 1
      preempted = sigterm.triggered or ckpt.reached_preemption(step)
      log_now = step % t.log_every_steps == 0 or step == end_step
      save_now = ckpt.should_save(step) or step == end_step or preempted
      if log_now or save_now:
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        _check_finite(step, values, workdir, ckpt)
        if log_now:
          dt = max(time.time() - t_log, 1e-9)
          values['steps_per_sec'] = (step - step_log) / dt
          values['clip_pairs_per_sec'] = values['steps_per_sec'] * t.batch_size
          values['epoch'] = step / setup.steps_per_epoch
          t_log, step_log = time.time(), step
          writer.write_scalars(step, {k: v for k, v in values.items()})
          progress.update(step, values)
        last_values = values
      else:
        progress.update(step)
      if save_now:
        ckpt.save(step, state)
      if preempted:
        metrics_lib.log_info('Stopping at step %d after a preemption signal.', step)
        break
  finally:
    progress.close()
    sigterm.restore()
    ckpt.close()
    writer.close()
  return graphdef, state, last_values


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming when possible), then evaluates on the foggy test split.

  Returns the evaluation results (also written to `<workdir>/results.json`).
  """
  from fognet_jax import evaluate  # pylint: disable=g-import-not-at-top
  setup = setup_run(config)
  graphdef, state, last = train(config, workdir, setup=setup)
  if int(jax.device_get(state.step)) < setup.total_steps:
    metrics_lib.log_info('Training stopped early at step %d; not evaluating.',
                         int(jax.device_get(state.step)))
    return {}
  if not config.eval.get('after_training', True):
    return {}
  results = evaluate.evaluate_state(config, graphdef, state, setup=setup, workdir=workdir)
  results['train_metrics'] = last
  if jax.process_index() == 0:
    evaluate.write_results(results, workdir)
  return results
