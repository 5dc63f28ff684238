"""A small NNX model, loss and data with the same interfaces as FogNet and the input pipeline.

Used by the training tests so that the train step, sharding, accumulation, checkpointing and
resume logic are tested independently of (and much faster than) the real model.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

NUM_CLASSES = 5
FRAMES, SIZE = 2, 8
CONTEXT = 6
VOCAB = 32


class ToyModel(nnx.Module):
  """Frame encoder (linear on pixels, mean over time) + text encoder (embedding mean)."""

  def __init__(self, *, dim: int = 16, rngs: nnx.Rngs):
    self.frame = nnx.Linear(SIZE * SIZE * 3, dim, rngs=rngs)
    self.visual_head = nnx.Linear(dim, dim, rngs=rngs)
    self.text = nnx.Embed(VOCAB, dim, rngs=rngs)
    self.text_proj = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(np.log(10.0), jnp.float32))

  def encode_text(self, tokens):
    return self.text_proj(jnp.mean(self.text(tokens), axis=1))  # (N, D)

  def _video(self, x):
    b, t = x.shape[:2]
    frames = self.frame(x.reshape(b, t, -1))  # (B, T, D)
    return self.visual_head(jax.nn.gelu(jnp.mean(frames, axis=1)))  # (B, D)

  def train_outputs(self, clean, foggy, text_emb):
    return {
      'clean': self._video(clean),
      'foggy': self._video(foggy),
      'text': text_emb,
      'logit_scale': self.logit_scale[...],
    }

  def predict(self, foggy, text_emb):
    v = self._video(foggy)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    t = text_emb / jnp.linalg.norm(text_emb, axis=-1, keepdims=True)
    if t.ndim == 2:
      t = t[None]
    logits = jnp.exp(self.logit_scale[...]) * jnp.einsum('bd,kcd->bkc', v, t)
    return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)  # (B, C)


def toy_loss(outputs, labels):
  """Per-sample cross-entropy of scaled cosines, foggy + 0.4 clean (decomposable in the batch)."""
  t = outputs['text'] / jnp.linalg.norm(outputs['text'], axis=-1, keepdims=True)
  scale = jnp.exp(outputs['logit_scale'])

  def ce(v):
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    logits = scale * v @ t.T
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

  loss_f, loss_c = ce(outputs['foggy']), ce(outputs['clean'])
  loss = loss_f + 0.4 * loss_c
  return loss, {'loss': loss, 'loss_f': loss_f, 'loss_c': loss_c, 'loss_temp': 0.0 * loss}


def prompt_tokens(num_templates: int = 3) -> np.ndarray:
  """(K, C, L) tokens: class c, template k -> ids depend on both."""
  rng = np.random.default_rng(0)
  return rng.integers(1, VOCAB, size=(num_templates, NUM_CLASSES, CONTEXT)).astype(np.int32)


def make_batch(seed: int, index: int, batch_size: int, nan: bool = False) -> dict:
  """Batch `index` of a deterministic paired stream: class-dependent patterns + noise."""
  rng = np.random.default_rng([seed, index])
  labels = rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32)
  base = np.random.default_rng(123).normal(size=(NUM_CLASSES, 1, SIZE, SIZE, 3))
  clean = base[labels] + 0.3 * rng.normal(size=(batch_size, FRAMES, SIZE, SIZE, 3))
  foggy = 0.5 * clean + 0.5 + 0.3 * rng.normal(size=clean.shape)
  if nan:
    foggy[:] = np.nan
  return {'clean': clean.astype(np.float32), 'foggy': foggy.astype(np.float32), 'label': labels}


def batches(seed: int, batch_size: int, start_step: int = 0, nan_at=None):
  i = start_step
  while True:
    yield make_batch(seed, i, batch_size, nan=(nan_at is not None and i == nan_at))
    i += 1


def blocking_batches(cfg, workdir: str, block_at: int):
  """`batches` for `train.train` that logs each start step to `workdir/starts.log` and, before
  batch `block_at`, creates `workdir/blocked` and waits for `workdir/release`."""

  def start_at(start):
    with open(os.path.join(workdir, 'starts.log'), 'a') as f:
      f.write(f'{start}\n')
    for i, b in enumerate(batches(cfg.seed, cfg.train.batch_size, start), start):
      if i == block_at:
        open(os.path.join(workdir, 'blocked'), 'w').close()
        while not os.path.exists(os.path.join(workdir, 'release')):
          time.sleep(0.05)
      yield b

  return start_at


def eval_batches(batch_size: int, num_videos: int = 13, views: int = 2):
  """Finite eval stream with padding + mask, like input_pipeline.eval_iterator."""
  full = make_batch(999, 0, num_videos)
  for s in range(0, num_videos, batch_size):
    foggy = full['foggy'][s : s + batch_size]
    labels = full['label'][s : s + batch_size]
    n = len(labels)
    pad = batch_size - n
    foggy = np.concatenate([foggy, np.zeros((pad,) + foggy.shape[1:], np.float32)])
    labels = np.concatenate([labels, np.zeros(pad, np.int32)])
    fv = np.stack([foggy + 0.01 * v for v in range(views)], axis=1)  # (B, V, T, H, W, 3)
    yield {'frames': fv.astype(np.float32), 'label': labels, 'mask': np.arange(batch_size) < n}


def config(**train_overrides) -> ml_collections.ConfigDict:
  """A full config with small train settings (data/model blocks unused by the toy); keyword
  arguments set train keys, or perf keys (async_checkpointing)."""
  import config_testutil

  c = config_testutil.recipe()
  c.data.num_frames = FRAMES
  c.data.image_size = SIZE
  c.model.backbone = 'tiny'
  c.train.batch_size = 16
  c.train.num_train_steps = 10
  c.train.learning_rate = 1e-2
  c.train.warmup_epochs = 0.0
  c.train.weight_decay = 0.01
  c.train.log_every_steps = 2
  c.train.checkpoint_every_steps = 4
  c.train.keep_checkpoints = 2
  c.train.freeze_text_pattern = r'(^|/)(text|text_proj)(/|$)'
  c.perf.fsdp_min_size = 16
  c.eval.batch_size = 8
  for k, v in train_overrides.items():
    (c.perf if k in c.perf else c.train)[k] = v
  return c


CLASS_NAMES = [f'class_{i}' for i in range(NUM_CLASSES)]


def steps(cfg, num_train_examples: int = 160):
  from fognet_jax import train

  return train.step_counts(cfg.train, num_train_examples)


def run_parts(cfg, mesh, *, num_train_examples: int = 160) -> dict:
  """The keyword arguments of `train.train` that `main.setup` would build, for the toy."""
  return dict(mesh=mesh, prompt_tokens=prompt_tokens(), steps=steps(cfg, num_train_examples))
