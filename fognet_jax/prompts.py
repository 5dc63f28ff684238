"""Class prompts: the 16 ActionCLIP text templates, tokenisation, per-step sampling.

Training (``sample_train_prompts``) draws **one template per class per step**: the
video-to-text loss (eq. 9) takes a softmax over all C class prompts, so every step needs
one prompt for each of the C classes, not only for the classes of the batch. (ActionCLIP
draws one template per *sample* because its loss only contrasts the prompts of the
batch; with a C-way V2T softmax a per-sample draw would give one class several
different prompts in the same softmax.) ActionCLIP's own loss
(``loss.kind='actionclip_kl'``) contrasts the B prompts of the batch, and its draw is
``sample_prompts_per_sample``: one template per sample. Evaluation uses all K templates and averages the
per-template class probabilities (see ``FogNet.predict``).
"""

from __future__ import annotations

from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: The 16 prompt templates of ActionCLIP (``{}`` = class name).
TEMPLATES: tuple[str, ...] = (
  'a photo of action {}',
  'a picture of action {}',
  'Human action of {}',
  '{}, an action',
  '{} this is an action',
  '{}, a video of action',
  'Playing action of {}',
  '{}',
  'Playing a kind of action, {}',
  'Doing a kind of action, {}',
  'Look, the human is {}',
  'Can you recognize the action of {}?',
  'Video classification of {}',
  'A video of {}',
  'The man is {}',
  'The woman is {}',
)


def readable_name(name: str) -> str:
  """``'brush_hair'`` / ``'ApplyEyeMakeup'`` style names as words (underscores -> spaces)."""
  return ' '.join(name.replace('_', ' ').split())


def class_prompts(
  class_names: Sequence[str], templates: Sequence[str] = TEMPLATES
) -> list[list[str]]:
  """Prompt strings, ``[k][c] = templates[k].format(readable_name(class_names[c]))``."""
  if not class_names:
    raise ValueError('class_names is empty: a classifier needs at least one class')
  for t in templates:
    if t.count('{}') != 1:
      raise ValueError(f"prompt template {t!r} must contain exactly one '{{}}'")
  return [[t.format(readable_name(n)) for n in class_names] for t in templates]


def tokenize_classes(
  class_names: Sequence[str],
  tokenizer: Callable[[list[str]], np.ndarray],
  templates: Sequence[str] = TEMPLATES,
) -> np.ndarray:
  """Tokenised prompts of every (template, class) pair.

  Args:
    class_names: the C class names (dataset order = label order).
    tokenizer: ``tokenizer.get_tokenizer(...)`` object: list[str] -> (N, L) int32.
    templates: the K templates (default: the 16 ActionCLIP ones).

  Returns:
    (K, C, L) int32 token ids (L = the tokenizer's context length, 77 for CLIP).
  """
  prompts = class_prompts(class_names, templates)
  k, c = len(prompts), len(class_names)
  flat = np.asarray(tokenizer([p for row in prompts for p in row]), dtype=np.int32)  # (K*C, L)
  if flat.ndim != 2 or flat.shape[0] != k * c:
    raise ValueError(f'tokenizer returned shape {flat.shape}, expected ({k * c}, context_length)')
  return flat.reshape(k, c, flat.shape[1])  # (K, C, L)


def trim_context(tokens: np.ndarray) -> np.ndarray:
  """Drops the token positions after the last end-of-text token of all prompts.

  CLIP's text tower is causal and reads each prompt at its end-of-text token (the row's
  largest id, first occurrence), so the positions after the latest such token change no
  embedding: the trimmed prompts encode to the same vectors with fewer tokens (16 instead
  of 77 for the ActionCLIP templates on short class names).

  Args:
    tokens: (..., L) int token ids.

  Returns:
    (..., L') with L' = 1 + the largest end-of-text position over all rows.
  """
  tokens = np.asarray(tokens)
  if tokens.shape[-1] == 0:
    raise ValueError(f'tokens must have at least one position, got shape {tokens.shape}')
  length = int(np.max(np.argmax(tokens, axis=-1))) + 1
  return tokens[..., :length]


def sample_train_prompts(tokens, rng):
  """One template per class, drawn independently for each class: (K, C, L) -> (C, L).

  Args:
    tokens: (K, C, L) output of ``tokenize_classes`` (numpy or jax array).
    rng: a ``jax.random`` key (works under ``jit``; returns a jax array) or a
      ``numpy.random.Generator`` (returns a numpy array).
  """
  if tokens.ndim != 3:
    raise ValueError(f'tokens must be (K, C, L), got shape {tokens.shape}')
  k, c, _ = tokens.shape
  if isinstance(rng, np.random.Generator):
    idx = rng.integers(0, k, size=c)
    return np.asarray(tokens)[idx, np.arange(c)]
  idx = jax.random.randint(rng, (c,), 0, k)
  return jnp.asarray(tokens)[idx, jnp.arange(c)]


def sample_prompts_per_sample(tokens, rng, labels):
  """ActionCLIP's draw: one template per sample, (K, C, L) x (B,) labels -> (B, L).

  Row b is template ``k_b ~ U{0..K-1}`` of class ``labels[b]``. Marked ``per_sample`` so the
  train step passes the batch labels and encodes B prompts instead of C.
  """
  if tokens.ndim != 3:
    raise ValueError(f'tokens must be (K, C, L), got shape {tokens.shape}')
  k = tokens.shape[0]
  if isinstance(rng, np.random.Generator):
    labels = np.asarray(labels)
    return np.asarray(tokens)[rng.integers(0, k, size=labels.shape), labels]
  idx = jax.random.randint(rng, jnp.shape(labels), 0, k)
  return jnp.asarray(tokens)[idx, labels]


sample_prompts_per_sample.per_sample = True
