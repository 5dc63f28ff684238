"""Prompt templates, tokenisation layout and per-step template sampling."""

import jax
import numpy as np
import pytest

from fognet_jax import prompts


class FakeTokenizer:
  """Deterministic stand-in: one id per string (its index in a growing table), row padded."""

  def __init__(self, context_length=8):
    self.table = {}
    self.context_length = context_length

  def __call__(self, texts):
    out = np.zeros((len(texts), self.context_length), np.int32)
    for i, t in enumerate(texts):
      out[i, 0] = self.table.setdefault(t, len(self.table) + 1)
    return out


def test_templates_are_the_16_actionclip_ones():
  assert len(prompts.TEMPLATES) == 16 and len(set(prompts.TEMPLATES)) == 16
  assert all(t.count('{}') == 1 for t in prompts.TEMPLATES)
  assert 'a photo of action {}' in prompts.TEMPLATES and '{}' in prompts.TEMPLATES


def test_tokenize_classes_layout():
  tok = FakeTokenizer()
  names = ['brush_hair', 'ride bike', 'jump']
  tokens = prompts.tokenize_classes(names, tok)
  assert tokens.shape == (16, 3, 8) and tokens.dtype == np.int32
  inverse = {v: k for k, v in tok.table.items()}
  for k, template in enumerate(prompts.TEMPLATES):
    for c, name in enumerate(names):
      assert inverse[tokens[k, c, 0]] == template.format(name.replace('_', ' '))


def test_sample_train_prompts_one_template_per_class():
  k, c = 16, 5
  tokens = np.zeros((k, c, 4), np.int32)
  tokens[..., 0] = np.arange(k)[:, None]  # template index
  tokens[..., 1] = np.arange(c)[None, :]  # class index
  draws = []
  for rng in [jax.random.key(i) for i in range(20)] + [np.random.default_rng(0)]:
    out = np.asarray(prompts.sample_train_prompts(tokens, rng))
    assert out.shape == (c, 4)
    np.testing.assert_array_equal(out[:, 1], np.arange(c))  # row c is a prompt of class c
    draws.append(out[:, 0])
  draws = np.stack(draws)
  # Templates vary across steps and across the classes of one step.
  assert len(np.unique(draws)) > 8
  assert any(len(set(row)) > 1 for row in draws)
  # Same key, same draw.
  np.testing.assert_array_equal(
    prompts.sample_train_prompts(tokens, jax.random.key(3)),
    prompts.sample_train_prompts(tokens, jax.random.key(3)),
  )


def test_bad_inputs():
  with pytest.raises(ValueError, match='empty'):
    prompts.tokenize_classes([], FakeTokenizer())
  with pytest.raises(ValueError, match='exactly one'):
    prompts.class_prompts(['a'], ['no placeholder'])
  with pytest.raises(ValueError, match='K, C, L'):
    prompts.sample_train_prompts(np.zeros((3, 4), np.int32), jax.random.key(0))
