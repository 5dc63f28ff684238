r"""Entry point: train and/or evaluate FogNet from an ml_collections config file.

  python -m fognet_jax.main --config=configs/synthetic.py --workdir=workdir/demo
  python -m fognet_jax.main --config=configs/fogact.py:b32,frames=4 --workdir=runs/b32 \
      --config.data.manual_dir=/data/FogAct --config.train.grad_accum_steps=4
  python -m fognet_jax.main --config=configs/synthetic.py --workdir=workdir/demo --mode=eval

--mode=train_and_eval (default, alias train): train, resuming from the workdir's latest
checkpoint, then evaluate on the test split (foggy stream; `eval.stream='clean'` for a
clean-test row). --mode=train_only: no evaluation.
--mode=eval: evaluate the latest checkpoint of --workdir, or --checkpoint (a step number or a
checkpoint directory), writing results.json and confusion_matrix.png to --output_dir
(default: --workdir).

This module assembles a run once (`setup`: processes, mesh, validation, data, prompts; then the
model, the loss and the iterators) and hands the pieces to `train.train` and
`evaluate.evaluate_state`, which never reach back up.
"""
import logging as std_logging
import os

from fognet_jax import host_memory  # the standard library only

if __name__ == '__main__':
  # First, before the imports below: restart once with huge pages for the host's large
  # buffers, which glibc reads only at start-up (fognet_jax/host_memory.py).
  host_memory.reexec_with_huge_pages()

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses  # pylint: disable=g-import-not-at-top
import json
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from fognet_jax import checkpointing
from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import input_pipeline
from fognet_jax import losses
from fognet_jax import metrics as metrics_lib
from fognet_jax import prompts
from fognet_jax import records
from fognet_jax import sharding
from fognet_jax import tokenizer as tokenizer_lib
from fognet_jax import train
from fognet_jax.models import fognet

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a program, so that importing this module
  (predict, notebooks, the experiments runner) leaves the global absl flags alone."""
  config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file, optionally `file.py:variant`.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, results.')
  flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'train_and_eval', 'train_only', 'eval'],
                    'What to do (train = train_and_eval).')
  flags.DEFINE_string('checkpoint', None,
                      'eval only: checkpoint step or directory (default: latest).')
  flags.DEFINE_string('output_dir', None,
                      'eval only: where results.json goes (default: --workdir).')
  flags.DEFINE_list('quiet_libraries', ['orbax', 'tensorflow_datasets'],
                    'Libraries whose INFO log lines are dropped from the console (warnings '
                    'still show).')
  flags.mark_flags_as_required(['config', 'workdir'])


class _DropLibraryInfo:
  """absl log filter: drops INFO records emitted from inside the named libraries' code."""

  def __init__(self, libraries):
    self._parts = tuple(f'{os.sep}{name}{os.sep}' for name in libraries)

  def filter(self, record) -> bool:
    if record.levelno > std_logging.INFO:
      return True
    return not any(part in record.pathname for part in self._parts)


CLASS_NAMES_FILE = 'class_names.json'  # in the workdir: the label order of the run's classes


@dataclasses.dataclass
class Run:
  """What every mode needs, built once from the config."""
  mesh: jax.sharding.Mesh
  data: records.DataInfo
  prompt_tokens: np.ndarray     # (K, C, L) class prompts, one row per template
  steps: train.StepCounts


def setup(config: ml_collections.ConfigDict) -> Run:
  """Processes, mesh, config validation, the prepared dataset and the class prompts."""
  sharding.maybe_initialize_distributed(config.distributed.initialize)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  config_lib.validate(config, num_devices=mesh.size, num_processes=jax.process_count())
  check_vocabulary(config)
  data = records.prepare(config.data)
  steps = train.resolve_steps(config.train, data.num_examples[config.data.train_split])
  return Run(mesh, data, class_prompt_tokens(config, data.class_names), steps)


def check_vocabulary(config: ml_collections.ConfigDict) -> None:
  """The tokenizer's ids must index the text tower's token embedding: an id past its end
  embeds as NaN, and training goes on with a NaN loss. Checked for a randomly initialised
  CLIP, whose vocabulary comes from the config; loaded weights bring CLIP's own (49408)."""
  if config.model.get('init_from'):
    return
  tok = tokenizer_lib.get_tokenizer(config.model.tokenizer.kind, path=config.model.tokenizer.path)
  vocab = fognet.clip_config(config.model).vocab_size
  if tok.vocab_size > vocab:
    raise ValueError(
        f'config: model.tokenizer.kind={config.model.tokenizer.kind!r} gives token ids up to '
        f'{tok.vocab_size - 1}, but the text tower has {vocab} token embeddings '
        f'(model.backbone={config.model.backbone!r}, model.clip_overrides.vocab_size='
        f'{config.model.clip_overrides.get("vocab_size")}); set '
        f'model.clip_overrides.vocab_size={tok.vocab_size}')


def class_prompt_tokens(config: ml_collections.ConfigDict, class_names) -> np.ndarray:
  """(K, C, L) tokens of the class prompts: the first `train.num_templates` templates."""
  tok = tokenizer_lib.get_tokenizer(config.model.tokenizer.kind, path=config.model.tokenizer.path)
  tokens = prompts.tokenize_classes(class_names, tok)
  if config.train.num_templates > 0:
    tokens = tokens[:config.train.num_templates]
  # The text tower is causal: positions after every prompt's end-of-text token change
  # nothing and are not computed.
  return prompts.trim_context(tokens)


def restore_state(config: ml_collections.ConfigDict, mesh, run_dir: str,
                  step: Optional[int] = None):
  """(graphdef, train state) of checkpoint `step` (None = the latest) of `run_dir`."""
  model = fognet.create_model(config.model, rngs=nnx.Rngs(config.seed))
  # The schedule's values are not part of the state; any schedule gives the same structure.
  graphdef, state, _, _ = train.build_state(config, mesh, model,
                                            train.make_schedule(config.train, 1, 0))
  del model
  ckpt = checkpointing.Checkpointer(run_dir, async_save=False)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {ckpt.directory}')
    state = ckpt.restore(state, step)
  finally:
    ckpt.close()
  return graphdef, state


def prompt_sampler(config: ml_collections.ConfigDict) -> train.PromptSampler:
  """The train step's prompt draw: one template per sample for ActionCLIP's loss, else one
  per class."""
  if config.loss.kind == 'actionclip_kl':
    return prompts.sample_prompts_per_sample
  return prompts.sample_train_prompts


def _evaluate(config, run: Run, graphdef, state, output_dir: str) -> dict:
  batches = input_pipeline.eval_iterator(
      config.data, batch_size=sharding.local_batch_size(config.eval.batch_size),
      stream=config.eval.stream)
  results = evaluate.evaluate_state(config, graphdef, state, mesh=run.mesh,
                                    class_names=run.data.class_names,
                                    prompt_tokens=run.prompt_tokens, batches=batches,
                                    workdir=output_dir)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       evaluate_after: bool = True) -> dict:
  """Trains (resuming when possible), then evaluates on the foggy test split.

  Returns the evaluation results, also written to `<workdir>/results.json` ({} when the
  run stopped early or `evaluate_after` is False).
  """
  run = setup(config)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CLASS_NAMES_FILE), 'w') as f:
      json.dump(list(run.data.class_names), f)
  model = fognet.create_model(config.model, rngs=nnx.Rngs(config.seed))
  local_batch = sharding.local_batch_size(config.train.batch_size)

  def batches(start_step):
    return input_pipeline.train_iterator(config.data, batch_size=local_batch, seed=config.seed,
                                         start_step=start_step)

  graphdef, state, last = train.train(
      config, workdir, mesh=run.mesh, model=model, loss_fn=losses.make_loss_fn(config),
      batches=batches, prompt_tokens=run.prompt_tokens, steps=run.steps,
      prompt_sampler=prompt_sampler(config))
  step = int(jax.device_get(state.step))
  if step < run.steps.total:
    metrics_lib.log_info('Training stopped early at step %d; not evaluating.', step)
    return {}
  if not evaluate_after:
    return {}
  results = _evaluate(config, run, graphdef, state, workdir)
  results['train_metrics'] = last
  if jax.process_index() == 0:
    evaluate.write_results(results, workdir)
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        checkpoint: Optional[str] = None,
                        output_dir: Optional[str] = None) -> dict:
  """Evaluates the latest checkpoint of `workdir` (or `checkpoint`: a step number or a path
  to `<run>/checkpoints[/<step>]`); writes results.json + confusion_matrix.png to
  `output_dir` (default: `workdir`)."""
  run_dir, step = checkpointing.locate(workdir, checkpoint)
  run = setup(config)
  graphdef, state = restore_state(config, run.mesh, run_dir, step)
  output_dir = output_dir or workdir
  results = _evaluate(config, run, graphdef, state, output_dir)
  if jax.process_index() == 0:
    evaluate.write_results(results, output_dir)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Keep TensorFlow (used by the input pipeline) off accelerators.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass
  if FLAGS.quiet_libraries:
    logging.get_absl_handler().addFilter(_DropLibraryInfo(FLAGS.quiet_libraries))
  config = FLAGS.config
  logging.info('%s', host_memory.describe())
  logging.info('Config:\n%s', config)
  try:
    if FLAGS.mode == 'eval':
      evaluate_checkpoint(config, FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                          output_dir=FLAGS.output_dir)
    else:
      train_and_evaluate(config, FLAGS.workdir, evaluate_after=FLAGS.mode != 'train_only')
  except (config_lib.ConfigError, checkpointing.WorkdirLockedError,
          checkpointing.CheckpointError) as e:
    # The user's to fix, and the message says what: no traceback.
    logging.error('%s', e)
    return 1
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
