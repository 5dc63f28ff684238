"""Evaluation on the foggy test split: Top-1/Top-5 over views, per-class accuracy, reports.

Each test video comes as V = num_clips x num_crops views of one stream: the foggy frames
(the clean stream is never read), or the clean ones with `eval.stream='clean'` (Table 5b's
"clean -> clean" row; the model's single-stream inference path is the same). For every view the model returns class probabilities averaged over
the K prompt templates (`model.predict` with (K, C, D) text embeddings); the video's
prediction is the mean of its views' probabilities. Outputs in the run directory:

  results.json           top1, top5, per-class accuracy, counts, views, checkpoint step
  confusion_matrix.png   rows = true class, columns = predicted, row-normalised (Figure 7)

`fognet_jax.main` builds the state (trained, or restored from a checkpoint) and the test
batches and calls `evaluate_state`; nothing here trains or reads checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any
from typing import Iterable
from typing import Optional

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from fognet_jax import pixels
from fognet_jax import sharding as sharding_lib

RESULTS_FILE = 'results.json'
CONFUSION_FILE = 'confusion_matrix.png'


# ------------------------------------------------------------------------------ metrics


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """(N,) bool: label among the k highest probabilities (ties broken by class index)."""
  k = min(k, probs.shape[1])
  order = np.argsort(-probs, axis=1, kind='stable')[:, :k]
  return np.any(order == labels[:, None], axis=1)


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(C, C) counts, rows = true class, columns = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, pred), 1)
  return cm


def summarize(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
  """Top-1, Top-5, per-class accuracy and the confusion matrix from video probabilities."""
  num_classes = len(class_names)
  pred = np.argmax(probs, axis=1)
  top1 = topk_correct(probs, labels, 1)
  top5 = topk_correct(probs, labels, 5)
  cm = confusion_matrix(pred, labels, num_classes)
  per_class = {}
  for c, name in enumerate(class_names):
    n = int(cm[c].sum())
    per_class[name] = float(cm[c, c] / n) if n else None
  valid = [v for v in per_class.values() if v is not None]
  return {
    'top1': float(top1.mean()) if len(labels) else 0.0,
    'top5': float(top5.mean()) if len(labels) else 0.0,
    'mean_class_accuracy': float(np.mean(valid)) if valid else 0.0,
    'num_videos': int(len(labels)),
    'num_classes': num_classes,
    'chance': 1.0 / max(num_classes, 1),
    'per_class_accuracy': per_class,
    'confusion_matrix': cm.tolist(),
  }


def plot_confusion(cm: np.ndarray, class_names: list[str], path: str, title: str = '') -> None:
  """Row-normalised confusion matrix as a PNG (matplotlib, Agg backend)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cm = np.asarray(cm, np.float64)
  norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  size = min(max(4.0, 0.28 * n + 2.5), 30.0)
  fig, ax = plt.subplots(figsize=(size, size), dpi=100)
  im = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
  ax.set_xticks(range(n))
  ax.set_yticks(range(n))
  fs = max(4, min(9, int(300 / max(n, 1))))
  ax.set_xticklabels(class_names, rotation=90, fontsize=fs)
  ax.set_yticklabels(class_names, fontsize=fs)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  if n <= 20:
    for i in range(n):
      for j in range(n):
        if cm[i, j]:
          ax.text(
            j,
            i,
            f'{norm[i, j]:.2f}',
            ha='center',
            va='center',
            fontsize=fs,
            color='white' if norm[i, j] > 0.5 else 'black',
          )
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ------------------------------------------------------------------------------ model side


def make_text_encoder(graphdef, mesh):
  """jit: (params, rest, tokens (K, C, L)) -> (K, C, D) text embeddings."""
  rep = sharding_lib.replicated(mesh)

  def encode(params, rest, tokens):
    model = nnx.merge(graphdef, params, rest)
    k, c, l = tokens.shape
    emb = model.encode_text(tokens.reshape(k * c, l))  # (K*C, D)
    return emb.reshape(k, c, emb.shape[-1])

  return jax.jit(encode, out_shardings=rep)


def make_predict_step(graphdef, mesh):
  """jit: (params, rest, frames (B, V, T, H, W, 3), text (K, C, D)) -> (B, C) view-mean probs.

  `frames`: the views of one stream, uint8 pixels (normalised here) or float frames
  normalised on the host."""
  data = sharding_lib.batch_sharding(mesh)

  def predict(params, rest, frames, text_emb):
    model = nnx.merge(graphdef, params, rest)
    v = frames.shape[1]
    x = einops.rearrange(pixels.model_input(frames), 'b v t h w c -> (b v) t h w c')
    probs = model.predict(x, text_emb)  # (B*V, C), averaged over the K templates
    probs = einops.rearrange(probs, '(b v) c -> b v c', v=v)
    return jnp.mean(probs.astype(jnp.float32), axis=1)  # (B, C)

  return jax.jit(predict, out_shardings=data)


def _gather(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def encode_prompts(
  graphdef, params, rest, *, mesh, prompt_tokens: np.ndarray, num_templates: int = -1
) -> jax.Array:
  """(K', C, D) text embeddings of the first `num_templates` templates (-1: all K)."""
  tokens = np.asarray(prompt_tokens, np.int32)
  if num_templates and num_templates > 0:
    tokens = tokens[:num_templates]
  rep = sharding_lib.replicated(mesh)
  return make_text_encoder(graphdef, mesh)(params, rest, jax.device_put(tokens, rep))


def run_eval(
  graphdef,
  params,
  rest,
  *,
  mesh,
  batches: Iterable[dict],
  prompt_tokens: np.ndarray,
  num_templates: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
  """(probs (N, C), labels (N,)) over all unpadded test videos of all processes."""
  text_emb = encode_prompts(
    graphdef, params, rest, mesh=mesh, prompt_tokens=prompt_tokens, num_templates=num_templates
  )
  predict = make_predict_step(graphdef, mesh)
  all_probs, all_labels = [], []
  for batch in batches:
    arrays = sharding_lib.put_global_batch({'frames': np.asarray(batch['frames'])}, mesh)
    probs = predict(params, rest, arrays['frames'], text_emb)  # global (B_global, C)
    if jax.process_count() == 1:
      probs = np.asarray(jax.device_get(probs))
    else:
      probs = np.asarray(multihost_utils.process_allgather(probs, tiled=True))
    labels = np.asarray(batch['label']).astype(np.int64)
    mask = np.asarray(batch['mask'], bool) if 'mask' in batch else np.ones(len(labels), bool)
    labels, mask = _gather(labels), _gather(mask)  # process order = row order of `probs`
    all_probs.append(probs[mask])
    all_labels.append(labels[mask])
  if not all_probs:
    raise ValueError('the evaluation split yielded no batches')
  probs = np.concatenate(all_probs)
  labels = np.concatenate(all_labels)
  return probs, labels


def evaluate_state(
  config: ml_collections.ConfigDict,
  graphdef,
  state,
  *,
  mesh,
  class_names: list[str],
  prompt_tokens: np.ndarray,
  batches: Iterable[dict],
  workdir: Optional[str] = None,
) -> dict:
  """Evaluates a train state on the test batches; returns the results dict.

  `batches`: the test views (`input_pipeline.eval_iterator` of `config.data.eval_split`, the
  stream `config.eval.stream`, under the key 'frames');
  `prompt_tokens` (K, C, L): the class prompts, of which the first `config.eval.num_templates`
  are averaged. With `workdir`, process 0 writes confusion_matrix.png there.
  """
  probs, labels = run_eval(
    graphdef,
    state.params,
    state.rest,
    mesh=mesh,
    batches=batches,
    prompt_tokens=prompt_tokens,
    num_templates=config.eval.num_templates,
  )
  results = summarize(probs, labels, class_names)
  step = int(jax.device_get(state.step))
  split = config.data.eval_split
  results.update(
    {
      'step': step,
      'split': split,
      'dataset': config.data.dataset,
      'stream': config.eval.get('stream', 'foggy'),
      'views': f'{config.data.num_clips}x{config.data.num_crops}',
      'num_frames': int(config.data.num_frames),
    }
  )
  logging.info(
    'Evaluation at step %d on %s/%s: Top-1 %.4f Top-5 %.4f (%d videos, chance %.4f)',
    step,
    config.data.dataset,
    split,
    results['top1'],
    results['top5'],
    results['num_videos'],
    results['chance'],
  )
  if workdir and jax.process_index() == 0 and config.eval.confusion_matrix:
    os.makedirs(workdir, exist_ok=True)
    plot_confusion(
      np.asarray(results['confusion_matrix']),
      class_names,
      os.path.join(workdir, CONFUSION_FILE),
      title=f'{config.data.dataset} {split} step {step}: Top-1 {100 * results["top1"]:.1f}%',
    )
  return results


def write_results(results: dict, directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, RESULTS_FILE)
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)
  return path
