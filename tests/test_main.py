"""End to end through the entry point: train + evaluate the synthetic config on a tiny
generated dataset, then `--mode=eval` of the saved run reproduces its results.json; bad
config values fail at start-up naming the key."""

import json
import os

import main_testutil as U
import pytest

TINY = U.TINY


def _main(*args, timeout=300):
  return U.run_module('fognet_jax.main', *args, timeout=timeout)


@pytest.fixture(scope='module')
def data_args(tmp_path_factory):
  return U.tiny_data_args(tmp_path_factory.mktemp('synthetic'))


def test_train_then_eval_reproduces_results(tmp_path, data_args):
  workdir = str(tmp_path / 'run')
  r = _main('--config=configs/synthetic.py:scratch', f'--workdir={workdir}', *data_args, *TINY)
  assert r.returncode == 0, r.stderr[-4000:]
  for name in ('results.json', 'confusion_matrix.png', 'metrics.jsonl', 'config.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.path.isdir(os.path.join(workdir, 'tensorboard'))
  with open(os.path.join(workdir, 'results.json')) as f:
    trained = json.load(f)
  assert trained['step'] == 3 and trained['num_classes'] == 14
  assert trained['num_videos'] > 0 and 0 <= trained['top1'] <= trained['top5'] <= 1
  for key in ('loss', 'loss_f', 'loss_c', 'loss_temp', 'learning_rate', 'clip_pairs_per_sec'):
    assert key in trained['train_metrics'], key
  assert sorted(
    int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()
  ) == [2, 3]

  out = str(tmp_path / 'again')
  r = _main(
    '--config=configs/synthetic.py:scratch',
    f'--workdir={workdir}',
    '--mode=eval',
    f'--output_dir={out}',
    *data_args,
    *TINY,
  )
  assert r.returncode == 0, r.stderr[-4000:]
  with open(os.path.join(out, 'results.json')) as f:
    again = json.load(f)
  for key in (
    'top1',
    'top5',
    'mean_class_accuracy',
    'per_class_accuracy',
    'confusion_matrix',
    'num_videos',
    'step',
  ):
    assert again[key] == trained[key], key


def test_bad_values_fail_at_startup_naming_the_key(tmp_path):
  r = _main(
    '--config=configs/synthetic.py:scratch',
    f'--workdir={tmp_path}',
    '--config.train.batch_size=12',
    timeout=120,
  )
  assert r.returncode != 0 and 'config.train.batch_size' in r.stderr
  r = _main(
    '--config=configs/synthetic.py:scratch',
    f'--workdir={tmp_path}',
    '--config.train.no_such_key=1',
    timeout=120,
  )
  assert r.returncode != 0 and 'no_such_key' in r.stderr
  assert not os.path.exists(os.path.join(str(tmp_path), 'checkpoints'))


def test_a_text_tower_smaller_than_the_tokenizer_fails_before_the_data_is_built(tmp_path):
  # Byte ids run to 258; with 200 embeddings the larger ids would embed as NaN.
  data_dir = tmp_path / 'tfds'
  r = _main(
    '--config=configs/synthetic.py:scratch',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.data_dir={data_dir}',
    '--config.model.clip_overrides.vocab_size=200',
    timeout=120,
  )
  assert r.returncode != 0
  assert 'model.clip_overrides.vocab_size=259' in r.stderr, r.stderr[-2000:]
  assert not data_dir.exists()


def test_the_demo_text_tower_has_one_embedding_per_byte_token():
  from fognet_jax import config_lib
  from fognet_jax import tokenizer
  from fognet_jax import weights

  # From scratch the architecture is the config's; fine-tuned, the committed towers' (259 too:
  # tests/test_export_clip.py).
  config = config_lib.load_config('synthetic:scratch')
  tok = tokenizer.get_tokenizer(config.model.tokenizer.kind)
  assert weights.clip_config(config.model).vocab_size == tok.vocab_size == 259


def test_library_info_lines_are_dropped_but_warnings_kept():
  import logging as std_logging

  from fognet_jax import main as main_lib

  f = main_lib._DropLibraryInfo(['orbax'])  # pylint: disable=protected-access

  def rec(path, level):
    return std_logging.LogRecord('absl', level, path, 1, 'msg', None, None)

  assert not f.filter(rec('/x/site-packages/orbax/checkpoint/manager.py', std_logging.INFO))
  assert f.filter(rec('/x/site-packages/orbax/checkpoint/manager.py', std_logging.WARNING))
  assert f.filter(rec('/x/fognet_jax/train.py', std_logging.INFO))


def test_the_model_is_built_with_the_perf_blocks_attention_and_residual_stream():
  import jax.numpy as jnp

  from fognet_jax import config_lib
  from fognet_jax import main as main_lib

  config = config_lib.load_config('synthetic:scratch,fusion=transformer')
  config.model.dtype = 'bfloat16'
  config.perf.residual_dtype = 'bfloat16'
  config.perf.attention_impl = 'xla'
  model = main_lib.create_model(config)
  assert model.clip.visual.residual_dtype == model.clip.text.residual_dtype == jnp.bfloat16
  attention = model.clip.visual.transformer.resblocks[0].attn
  assert attention.attention_impl == 'xla'
  config.perf.residual_dtype = None
  config.perf.attention_impl = None
  model = main_lib.create_model(config)
  assert model.clip.visual.residual_dtype == jnp.float32
  assert model.clip.visual.transformer.resblocks[0].attn.attention_impl is None
