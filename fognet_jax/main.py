r"""Entry point: train and/or evaluate FogNet from an ml_collections config file.

  python -m fognet_jax.main --config=configs/synthetic.py --workdir=workdir/demo
  python -m fognet_jax.main --config=configs/fogact.py:b32,frames=4 --workdir=runs/b32 \
      --config.data.manual_dir=/data/FogAct --config.train.grad_accum_steps=4
  python -m fognet_jax.main --config=configs/synthetic.py --workdir=workdir/demo --mode=eval

--mode=train_and_eval (default, alias train): train, resuming from the workdir's latest
checkpoint, then evaluate on the foggy test split. --mode=train_only: no evaluation.
--mode=eval: evaluate the latest checkpoint of --workdir, or --checkpoint (a step number or a
checkpoint directory), writing results.json and confusion_matrix.png to --output_dir
(default: --workdir).
"""
import logging as std_logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally `file.py:variant`.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, results.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'train_and_eval', 'train_only', 'eval'],
                          'What to do (train = train_and_eval).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'eval only: checkpoint step or directory (default: latest).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'eval only: where results.json goes (default: --workdir).')
_QUIET_LIBRARIES = flags.DEFINE_list(
    'quiet_libraries', ['orbax', 'tensorflow_datasets'],
    'Libraries whose INFO log lines are dropped from the console (warnings still show).')
flags.mark_flags_as_required(['config', 'workdir'])


class _DropLibraryInfo:
  """absl log filter: drops INFO records emitted from inside the named libraries' code."""

  def __init__(self, libraries):
    self._parts = tuple(f'{os.sep}{name}{os.sep}' for name in libraries)

  def filter(self, record) -> bool:
    if record.levelno > std_logging.INFO:
      return True
    return not any(part in record.pathname for part in self._parts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Keep TensorFlow (used by the input pipeline) off accelerators.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass
  if _QUIET_LIBRARIES.value:
    logging.get_absl_handler().addFilter(_DropLibraryInfo(_QUIET_LIBRARIES.value))
  from fognet_jax import evaluate  # pylint: disable=g-import-not-at-top
  from fognet_jax import train  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  logging.info('Config:\n%s', config)
  if _MODE.value == 'eval':
    evaluate.evaluate(config, _WORKDIR.value, checkpoint=_CHECKPOINT.value,
                      output_dir=_OUTPUT_DIR.value)
  elif _MODE.value == 'train_only':
    with config.unlocked():
      config.eval.after_training = False
    train.train_and_evaluate(config, _WORKDIR.value)
  else:
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
