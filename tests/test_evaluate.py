"""Evaluation: metrics against independent loops, view averaging, padding masks, PNG."""

import os

import jax.numpy as jnp
import numpy as np
import train_toy as toy
from flax import nnx

from fognet_jax import augment
from fognet_jax import evaluate
from fognet_jax import optim
from fognet_jax import sharding
from fognet_jax import train


def test_summarize_matches_loops():
  rng = np.random.default_rng(0)
  n, c = 50, 7
  probs = rng.random((n, c))
  labels = rng.integers(0, c, n)
  labels[:3] = 6
  names = [f'c{i}' for i in range(c)]
  res = evaluate.summarize(probs, labels, names)
  top1 = np.mean([np.argmax(p) == y for p, y in zip(probs, labels)])
  top5 = np.mean([y in sorted(range(c), key=lambda j: -p[j])[:5] for p, y in zip(probs, labels)])
  assert res['top1'] == top1 and res['top5'] == top5
  cm = np.zeros((c, c), int)
  for p, y in zip(probs, labels):
    cm[y, np.argmax(p)] += 1
  assert res['confusion_matrix'] == cm.tolist()
  for i, name in enumerate(names):
    idx = labels == i
    expect = float(np.mean(np.argmax(probs[idx], 1) == i)) if idx.any() else None
    assert res['per_class_accuracy'][name] == expect
  assert res['num_videos'] == n and abs(res['chance'] - 1 / c) < 1e-12


def test_eval_averages_views_and_drops_padding(tmp_path):
  model = toy.ToyModel(rngs=nnx.Rngs(0))
  graphdef, params, rest = train.split_model(model)
  tokens = toy.prompt_tokens()
  mesh = sharding.make_mesh(8)
  probs, labels = evaluate.run_eval(
    graphdef,
    params,
    rest,
    mesh=mesh,
    batches=toy.eval_batches(8, num_videos=13, views=3),
    prompt_tokens=tokens,
  )
  assert probs.shape == (13, toy.NUM_CLASSES) and labels.shape == (13,)
  # Independent: per video, per view, predict on one device, average the views.
  text = model.encode_text(jnp.asarray(tokens.reshape(-1, tokens.shape[-1])))
  text = text.reshape(tokens.shape[0], tokens.shape[1], -1)
  expect = []
  for b in toy.eval_batches(13, num_videos=13, views=3):
    for v in range(3):
      expect.append(np.asarray(model.predict(jnp.asarray(b['frames'][:, v]), text)))
    np.testing.assert_array_equal(labels, b['label'])
  np.testing.assert_allclose(probs, np.mean(expect, axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  # Fewer templates changes the text embeddings used.
  p1, _ = evaluate.run_eval(
    graphdef,
    params,
    rest,
    mesh=mesh,
    batches=toy.eval_batches(8, num_videos=13, views=3),
    prompt_tokens=tokens,
    num_templates=1,
  )
  assert np.max(np.abs(p1 - probs)) > 1e-6


def test_eval_of_uint8_views_equals_host_normalised_views():
  """`pixels_on_device`: uint8 views normalised in the eval step = the host's float views."""
  model = toy.ToyModel(rngs=nnx.Rngs(0))
  graphdef, params, rest = train.split_model(model)
  tokens = toy.prompt_tokens()
  mesh = sharding.make_mesh(8)
  u8 = [
    dict(b, frames=np.clip(b['frames'] * 60 + 120, 0, 255).astype(np.uint8))
    for b in toy.eval_batches(8, num_videos=13, views=2)
  ]
  host = [dict(b, frames=augment.normalize(b['frames'])) for b in u8]
  p_u8, l_u8 = evaluate.run_eval(
    graphdef, params, rest, mesh=mesh, batches=u8, prompt_tokens=tokens
  )
  p_host, l_host = evaluate.run_eval(
    graphdef, params, rest, mesh=mesh, batches=host, prompt_tokens=tokens
  )
  np.testing.assert_array_equal(l_u8, l_host)
  np.testing.assert_allclose(p_u8, p_host, rtol=1e-5, atol=1e-6)


def test_state_evaluation_writes_png_and_results(tmp_path):
  cfg = toy.config()
  mesh = sharding.make_mesh(8)
  sched = optim.make_schedule(cfg.train, 10, 0)
  graphdef, state, _, _ = train.build_state(cfg, mesh, toy.ToyModel(rngs=nnx.Rngs(0)), sched)
  res = evaluate.evaluate_state(
    cfg,
    graphdef,
    state,
    mesh=mesh,
    class_names=toy.CLASS_NAMES,
    prompt_tokens=toy.prompt_tokens(),
    workdir=str(tmp_path),
    batches=toy.eval_batches(8, num_videos=13, views=2),
  )
  path = evaluate.write_results(res, str(tmp_path))
  png = os.path.join(str(tmp_path), evaluate.CONFUSION_FILE)
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.path.getsize(png) > 2000
  import json

  with open(path) as f:
    loaded = json.load(f)
  assert loaded['num_videos'] == 13 and loaded['step'] == 0
  assert 0.0 <= loaded['top1'] <= loaded['top5'] <= 1.0
  assert sum(map(sum, loaded['confusion_matrix'])) == 13
