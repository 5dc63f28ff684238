r"""Why a Table 5 row scores what it scores: fit, test-time input, and stream gap of a run.

For each finished run directory (`WORKDIR/runs/<row>/seed<k>`, or any `main` run) it loads the
last checkpoint and reports Top-1 (%) of the model on

  train/foggy       the training split, foggy stream, evaluation views (no augmentation):
                    how well the model fits what it was trained on
  test/foggy        the test split through the foggy-only inference path (the table's figure)
  test/clean        the same path on the clean twins
  test/paired       FogNet rows only: the two-stream training path (FAS over the 2T tokens of
                    the clean and foggy clip, ME across streams), the foggy output classified.
                    The gap paired - foggy is what the model loses when the clean twin that it
                    saw in training is absent at test time.

  python benchmarks/table5_diagnostics.py workdir/tables/runs/*/seed0 [--json=OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import input_pipeline
from fognet_jax import losses
from fognet_jax import main as main_lib
from fognet_jax import pixels


def _top1(probs: np.ndarray, labels: np.ndarray) -> float:
  return 100.0 * float(np.mean(np.argmax(probs, -1) == labels))


def _single_stream(config, run, graphdef, state, split: str, stream: str) -> float:
  batches = input_pipeline.eval_iterator(
    config.data,
    split=split,
    batch_size=config.eval.batch_size,
    stream=stream,
    **input_pipeline.perf_options(config.perf),
  )
  probs, labels = evaluate.run_eval(
    graphdef,
    state.params,
    state.rest,
    mesh=run.mesh,
    batches=batches,
    prompt_tokens=run.prompt_tokens,
    num_templates=config.eval.num_templates,
  )
  return _top1(probs, labels)


def _paired(config, run, graphdef, state) -> float:
  """Test Top-1 of the two-stream path (clean twin present), foggy output classified."""
  text = evaluate.encode_prompts(
    graphdef,
    state.params,
    state.rest,
    mesh=run.mesh,
    prompt_tokens=run.prompt_tokens,
    num_templates=config.eval.num_templates,
  )  # (K, C, D)

  @jax.jit
  def probs_fn(params, rest, clean, foggy, text_emb):
    model = nnx.merge(graphdef, params, rest)
    out = model.train_outputs(pixels.model_input(clean), pixels.model_input(foggy), text_emb[0])
    logits = losses.similarity_logits(out['video_f'], text_emb, model.logit_scale)  # (B,K,C)
    return jnp.mean(jax.nn.softmax(logits, -1), axis=1)

  # The evaluation iterator of each stream: the same examples in the same order and padding.
  streams = [
    input_pipeline.eval_iterator(
      config.data,
      batch_size=config.eval.batch_size,
      stream=s,
      **input_pipeline.perf_options(config.perf),
    )
    for s in ('clean', 'foggy')
  ]
  correct = n = 0
  for clean, foggy in zip(*streams):
    assert np.array_equal(clean['label'], foggy['label'])
    probs = np.asarray(
      probs_fn(state.params, state.rest, clean['frames'][:, 0], foggy['frames'][:, 0], text)
    )  # view 0 of (B, V, T, H, W, 3)
    mask = foggy['mask']
    correct += int(np.sum((np.argmax(probs, -1) == foggy['label'])[mask]))
    n += int(np.sum(mask))
  return 100.0 * correct / n


def diagnose(run_dir: str) -> dict:
  with open(os.path.join(run_dir, 'config.json')) as f:
    config = ml_collections.ConfigDict(config_lib.upgrade_saved_config(json.load(f)))
  run = main_lib.setup(config)
  graphdef, state = main_lib.restore_state(config, run.mesh, run_dir)
  row = {'run': run_dir, 'arch': config.model.arch}
  row['train/foggy'] = _single_stream(
    config, run, graphdef, state, config.data.train_split, 'foggy'
  )
  row['test/foggy'] = _single_stream(config, run, graphdef, state, config.data.eval_split, 'foggy')
  row['test/clean'] = _single_stream(config, run, graphdef, state, config.data.eval_split, 'clean')
  if config.model.arch == 'fognet':
    row['test/paired'] = _paired(config, run, graphdef, state)
  return row


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', help='run directories with config.json + checkpoints/')
  parser.add_argument('--json', help='also write the rows here')
  args = parser.parse_args(argv)
  keys = ['train/foggy', 'test/foggy', 'test/clean', 'test/paired']
  rows = []
  print('| run | ' + ' | '.join(keys) + ' |')
  print('|---|' + '---|' * len(keys))
  for run_dir in args.runs:
    row = diagnose(run_dir.rstrip('/'))
    rows.append(row)
    name = '/'.join(row['run'].split('/')[-2:])
    cells = [f'{row[k]:.1f}' if k in row else '-' for k in keys]
    print(f'| {name} | ' + ' | '.join(cells) + ' |', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
