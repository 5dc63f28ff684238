"""The optimizer and learning-rate schedule of training.

AdamW (no weight decay on biases, norms and scalars) with per-parameter labels read from the
parameter paths: with `config.train.freeze_text` the parameters matching `freeze_text_pattern`
get zero updates; with `fusion_lr_ratio` != 1 those matching `fusion_pattern` (the temporal
fusion module) move at that multiple of the learning rate; optional clipping by global norm.
The schedule: linear warm-up, then cosine annealing. `fognet_jax.train` builds the train
state with them.
"""

from __future__ import annotations

import re
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


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


def trainable_labels(
  params: nnx.State, freeze_pattern: Optional[str], fusion_pattern: Optional[str] = None
) -> Any:
  """'frozen' / 'fusion' / 'train' per parameter: frozen where the path matches
  `freeze_pattern`, else fusion where it matches `fusion_pattern`, else train."""
  frozen = re.compile(freeze_pattern) if freeze_pattern else None
  fusion = re.compile(fusion_pattern) if fusion_pattern else None

  def label(p, _):
    path = path_str(p)
    if frozen is not None and frozen.search(path):
      return 'frozen'
    if fusion is not None and fusion.search(path):
      return 'fusion'
    return 'train'

  return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(tcfg: ml_collections.ConfigDict, total_steps: int, warmup_steps: int):
  """Linear warm-up from 0 to the peak, then cosine annealing to `end_lr_ratio * peak`."""
  total_steps = max(int(total_steps), 1)
  warmup_steps = int(min(max(warmup_steps, 0), total_steps - 1))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=tcfg.learning_rate,
    warmup_steps=warmup_steps,
    decay_steps=total_steps,
    end_value=tcfg.learning_rate * tcfg.end_lr_ratio,
  )


def make_optimizer(
  tcfg: ml_collections.ConfigDict, params: nnx.State, schedule
) -> optax.GradientTransformation:
  """AdamW (no decay on biases, norms, scalars), optional clipping, optional frozen text,
  the temporal fusion module at `fusion_lr_ratio` x the learning rate (ActionCLIP's f_ratio)."""
  decay_mask = jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)

  def adamw(lr):
    return optax.adamw(
      lr, b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.eps, weight_decay=tcfg.weight_decay, mask=decay_mask
    )

  ratio = float(tcfg.get('fusion_lr_ratio', 1.0))
  fusion_pattern = tcfg.get('fusion_pattern') if ratio != 1.0 else None
  labels = trainable_labels(
    params, tcfg.freeze_text_pattern if tcfg.freeze_text else None, fusion_pattern
  )
  names = set(jax.tree.leaves(labels))
  if tcfg.freeze_text and 'frozen' not in names:
    raise ValueError(
      'config.train.freeze_text=True but config.train.freeze_text_pattern '
      f'{tcfg.freeze_text_pattern!r} matches no parameter'
    )
  if fusion_pattern and 'fusion' not in names:
    raise ValueError(
      f'config.train.fusion_lr_ratio={ratio} but config.train.fusion_pattern '
      f'{fusion_pattern!r} matches no parameter (model.temporal_fusion is '
      "'mean': there is no fusion module)"
    )
  if names == {'train'}:
    tx = adamw(schedule)
  else:
    tx = optax.multi_transform(
      {
        'train': adamw(schedule),
        'fusion': adamw(lambda step: ratio * schedule(step)),
        'frozen': optax.set_to_zero(),
      },
      labels,
    )
  if tcfg.grad_clip_norm and tcfg.grad_clip_norm > 0:
    # The global norm of the gradients that are applied (frozen ones zeroed first).
    zero_frozen = (
      [
        optax.multi_transform(
          {'train': optax.identity(), 'fusion': optax.identity(), 'frozen': optax.set_to_zero()},
          labels,
        )
      ]
      if 'frozen' in names
      else []
    )
    tx = optax.chain(*zero_frozen, optax.clip_by_global_norm(tcfg.grad_clip_norm), tx)
  return tx
