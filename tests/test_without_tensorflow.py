"""Training and evaluating on a prepared dataset needs no TensorFlow (GPU images often lack
it): the same run with TensorFlow hidden gives the same metrics and results."""

import json
import os
import subprocess
import sys

import main_testutil

# Runs `python -m MODULE ARGS...` with every `tensorflow` module unfindable: find_spec returns
# None and importing raises ModuleNotFoundError, as on a machine where it is not installed.
HIDE_TF = r"""
import importlib.machinery
import runpy
import sys


class _HideTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)


sys.meta_path = [_HideTensorFlow if f is importlib.machinery.PathFinder else f
                 for f in sys.meta_path]
import importlib.util
assert importlib.util.find_spec('tensorflow') is None
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  drop = ('steps_per_sec', 'clip_pairs_per_sec')
  return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_train_and_evaluate_without_tensorflow(tmp_path):
  data = main_testutil.tiny_data_args(tmp_path)
  args = ['--config=configs/synthetic.py:scratch', *main_testutil.TINY, *data]
  # With TensorFlow: builds the dataset (that needs it), trains, evaluates.
  with_tf = main_testutil.run_module('fognet_jax.main', *args, f'--workdir={tmp_path / "a"}')
  assert with_tf.returncode == 0, with_tf.stderr[-3000:]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  without = subprocess.run(
    [sys.executable, '-c', HIDE_TF, 'fognet_jax.main', *args, f'--workdir={tmp_path / "b"}'],
    cwd=main_testutil.ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert without.returncode == 0, without.stderr[-3000:]
  assert 'No TensorBoard events' in without.stderr
  assert not os.path.exists(tmp_path / 'b' / 'tensorboard')
  assert os.listdir(tmp_path / 'a' / 'tensorboard')
  # The same batches, the same training, the same evaluation.
  assert _rows(tmp_path / 'b') == _rows(tmp_path / 'a')
  results = [json.load(open(tmp_path / d / 'results.json')) for d in ('a', 'b')]
  for key in ('top1', 'top5', 'confusion_matrix', 'num_videos'):
    assert results[0][key] == results[1][key], key
