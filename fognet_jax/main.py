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

A user error (a bad flag, config file, variant or key, an impossible config value, missing
data, a workdir whose checkpoints do not restore, a checkpoint that cannot be written) ends
the program with one `error: ...` line on stderr and exit status 1; the log lines of the
start-up are printed only once the run has started (`_HeldLog`).

This module assembles a run once (`setup`: processes, mesh, validation, data, prompts; then the
model, the loss and the iterators) and hands the pieces to `train.train` and
`evaluate.evaluate_state`, which never reach back up.
"""

import dataclasses
import difflib
import json
import logging as std_logging
import os
import sys
import traceback
from typing import Callable
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that TF_CPP_MIN_LOG_LEVEL does not hide.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax
import ml_collections
import numpy as np
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from flax import nnx
from ml_collections import config_flags

from fognet_jax import checkpointing
from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import input_pipeline
from fognet_jax import losses
from fognet_jax import metrics as metrics_lib
from fognet_jax import optim
from fognet_jax import prompts
from fognet_jax import records
from fognet_jax import sharding
from fognet_jax import tokenizer as tokenizer_lib
from fognet_jax import train
from fognet_jax import weights
from fognet_jax.models import fognet

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a program, so that importing this module
  (predict, notebooks, the experiments runner) leaves the global absl flags alone."""
  config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally `file.py:variant`.', lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, results.')
  flags.DEFINE_enum(
    'mode',
    'train_and_eval',
    ['train', 'train_and_eval', 'train_only', 'eval'],
    'What to do (train = train_and_eval).',
  )
  flags.DEFINE_string(
    'checkpoint', None, 'eval only: checkpoint step or directory (default: latest).'
  )
  flags.DEFINE_string(
    'output_dir', None, 'eval only: where results.json goes (default: --workdir).'
  )
  flags.DEFINE_list(
    'quiet_libraries',
    ['orbax', 'tensorflow_datasets'],
    'Libraries whose INFO log lines are dropped from the console (warnings still show).',
  )
  flags.mark_flags_as_required(['config', 'workdir'])


class _DropLibraryInfo:
  """absl log filter: drops INFO records emitted from inside the named libraries' code."""

  def __init__(self, libraries):
    self._parts = tuple(f'{os.sep}{name}{os.sep}' for name in libraries)

  def filter(self, record) -> bool:
    if record.levelno > std_logging.INFO:
      return True
    return not any(part in record.pathname for part in self._parts)


class _DropOrbaxTracebacks:
  """absl log filter: drops the error records with a traceback that Orbax code logs or raised
  (asyncio logs the exceptions of its futures). A failed save or restore reaches
  `checkpointing.Checkpointer` as an exception, which reports it once, naming the checkpoint;
  Orbax's background threads and futures log the same failure many times over."""

  _PART = f'{os.sep}orbax{os.sep}'

  def filter(self, record) -> bool:
    if not record.exc_info or record.levelno < std_logging.ERROR:
      return True
    if self._PART in record.pathname:
      return False
    frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info[2] else []
    return not any(self._PART in frame.filename for frame in frames)


class _HeldLog:
  """absl log filter that holds the console's records back until the run has started (its
  checkpoint restored or its state initialised): a run refused at start-up then prints only
  its one `error:` line. `release` prints the held records and lets later ones through;
  `discard` drops them."""

  def __init__(self, handler):
    self._handler = handler
    self._records = []
    handler.addFilter(self)

  def filter(self, record) -> bool:
    self._records.append(record)
    return False

  def _detach(self) -> list:
    self._handler.removeFilter(self)
    records, self._records = self._records, []
    return records

  def release(self, *unused_args) -> None:
    for record in self._detach():
      self._handler.handle(record)

  def discard(self) -> None:
    self._detach()


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# What a user fixes from the message alone: one `error:` line, no traceback.
USER_ERRORS = (
  config_lib.ConfigError,
  records.DataError,
  checkpointing.CheckpointError,
  checkpointing.WorkdirLockedError,
  FileNotFoundError,
)


def print_error(message) -> None:
  """`error: message` on one line of stderr."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run(..., flags_parser=parse_flags)`), except that a bad flag,
  config file, variant token or config key exits with one `error:` line naming it and status 1
  (absl adds a usage hint, ml_collections a traceback)."""
  try:
    rest = FLAGS(argv)
    if 'config' in FLAGS and FLAGS['config'].value is not None:
      FLAGS.config.get('seed')  # a config file that did not load raises on first use
  except Exception as e:  # pylint: disable=broad-except
    print_error(_flag_error(e, argv))
    sys.exit(1)
  return rest


def run(program_main: Callable[[list[str]], Optional[int]]) -> None:
  """`app.run` for the programs that take main's flags: `parse_flags`, and a user error or a
  Ctrl-C that `program_main` does not handle ends it with one `error:` line."""

  def guarded(argv):
    try:
      return program_main(argv)
    except USER_ERRORS as e:
      print_error(e)
      return 1
    except KeyboardInterrupt:
      print_error('interrupted')
      return EXIT_INTERRUPTED

  app.run(guarded, flags_parser=parse_flags)


def _config_argument(argv) -> Optional[str]:
  """The value of --config in `argv` ('file.py[:variant]'), None without one."""
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition('=')
    if name in ('--config', '-config'):
      return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _flag_error(error: Exception, argv) -> str:
  """The message of a flag parsing error, on one line, naming the flag."""
  spec = _config_argument(argv)
  if spec:
    path = spec.split(':', 1)[0]
    if not os.path.isfile(path):
      return f'--config={spec}: no such config file {path}'
    if isinstance(error, (AttributeError, KeyError)):
      unknown = _unknown_config_key(spec, argv)
      if unknown:
        return unknown
  text = str(error).strip()
  if isinstance(error, flags.Error) and '\n' not in text:
    return text
  # ml_collections wraps an error of the config file in a traceback: its first cause says it.
  root = error
  while root.__cause__ or root.__context__:
    root = root.__cause__ or root.__context__
  return f'--config={spec}: {root}' if spec else str(root)


def _unknown_config_key(spec: str, argv) -> Optional[str]:
  """'--config.KEY: no such key ...' for the first override in `argv` that names no key of
  the config `spec`, with the closest key; None when every key exists."""
  config = FLAGS['config'].parser.parse(spec)
  for arg in argv:
    if not arg.startswith(('--config.', '-config.')):
      continue
    key = arg.split('=', 1)[0].split('.', 1)[1]
    node, done = config, []
    for part in key.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=1)
        where = '.'.join(done) or 'the config'
        hint = f'; did you mean {".".join(done + close)}?' if close else ''
        return f'--config.{key}: {where} has no key {part!r}{hint}'
      node, done = node[part], done + [part]
  return None


CLASS_NAMES_FILE = 'class_names.json'  # in the workdir: the label order of the run's classes


@dataclasses.dataclass
class Run:
  """What every mode needs, built once from the config."""

  mesh: jax.sharding.Mesh
  data: records.DataInfo
  prompt_tokens: np.ndarray  # (K, C, L) class prompts, one row per template
  steps: train.StepCounts


def setup(config: ml_collections.ConfigDict) -> Run:
  """Processes, mesh, config validation, the prepared dataset and the class prompts."""
  sharding.maybe_initialize_distributed(config.distributed.initialize)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  config_lib.validate(config, num_devices=mesh.size, num_processes=jax.process_count())
  check_vocabulary(config)
  data = records.prepare(config.data)
  records.check_num_frames(config.data, data.builder)
  steps = train.step_counts(config.train, data.num_examples[config.data.train_split])
  return Run(mesh, data, class_prompt_tokens(config, data.class_names), steps)


def check_vocabulary(config: ml_collections.ConfigDict) -> None:
  """The tokenizer's ids must index the text tower's token embedding: an id past its end
  embeds as NaN, and training goes on with a NaN loss. Checked for a randomly initialised
  CLIP, whose vocabulary comes from the config; loaded weights bring CLIP's own (49408)."""
  if config.model.get('init_from'):
    return
  tok = tokenizer_lib.get_tokenizer(config.model.tokenizer.kind, path=config.model.tokenizer.path)
  vocab = weights.clip_config(config.model).vocab_size
  if tok.vocab_size > vocab:
    raise ValueError(
      f'config: model.tokenizer.kind={config.model.tokenizer.kind!r} gives token ids up to '
      f'{tok.vocab_size - 1}, but the text tower has {vocab} token embeddings '
      f'(model.backbone={config.model.backbone!r}, model.clip_overrides.vocab_size='
      f'{config.model.clip_overrides.get("vocab_size")}); set '
      f'model.clip_overrides.vocab_size={tok.vocab_size}'
    )


def class_prompt_tokens(config: ml_collections.ConfigDict, class_names) -> np.ndarray:
  """(K, C, L) tokens of the class prompts: the first `train.num_templates` templates."""
  tok = tokenizer_lib.get_tokenizer(config.model.tokenizer.kind, path=config.model.tokenizer.path)
  tokens = prompts.tokenize_classes(class_names, tok)
  if config.train.num_templates > 0:
    tokens = tokens[: config.train.num_templates]
  # The text tower is causal: positions after every prompt's end-of-text token change
  # nothing and are not computed.
  return prompts.trim_context(tokens)


def create_model(config: ml_collections.ConfigDict) -> fognet.FogNet:
  """The model of `config`, built with the perf block's attention and residual stream."""
  return weights.create_model(
    config.model,
    rngs=nnx.Rngs(config.seed),
    attention_impl=config.perf.attention_impl,
    residual_dtype=config.perf.residual_dtype,
  )


def restore_state(
  config: ml_collections.ConfigDict, mesh, run_dir: str, step: Optional[int] = None
):
  """(graphdef, train state) of checkpoint `step` (None = the latest) of `run_dir`."""
  model = create_model(config)
  # The schedule's values are not part of the state; any schedule gives the same structure.
  graphdef, state, _, _ = train.build_state(
    config, mesh, model, optim.make_schedule(config.train, 1, 0)
  )
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
    config.data,
    batch_size=sharding.local_batch_size(config.eval.batch_size),
    stream=config.eval.stream,
    **input_pipeline.perf_options(config.perf),
  )
  results = evaluate.evaluate_state(
    config,
    graphdef,
    state,
    mesh=run.mesh,
    class_names=run.data.class_names,
    prompt_tokens=run.prompt_tokens,
    batches=batches,
    workdir=output_dir,
  )
  return results


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  evaluate_after: bool = True,
  on_start: Optional[Callable[[int], None]] = None,
) -> dict:
  """Trains (resuming when possible), then evaluates on the foggy test split.

  Returns the evaluation results, also written to `<workdir>/results.json` ({} when the
  run stopped early or `evaluate_after` is False). `on_start(step)` is called once the
  training state is restored or initialised.
  """
  run = setup(config)

  def started(step: int) -> None:
    # Like config.json: not rewritten by a run that cannot restore the workdir's checkpoints.
    if jax.process_index() == 0:
      with open(os.path.join(workdir, CLASS_NAMES_FILE), 'w') as f:
        json.dump(list(run.data.class_names), f)
    if on_start is not None:
      on_start(step)

  model = create_model(config)
  local_batch = sharding.local_batch_size(config.train.batch_size)

  def batches(start_step):
    return input_pipeline.train_iterator(
      config.data,
      batch_size=local_batch,
      seed=config.seed,
      start_step=start_step,
      **input_pipeline.perf_options(config.perf),
    )

  graphdef, state, last = train.train(
    config,
    workdir,
    mesh=run.mesh,
    model=model,
    loss_fn=losses.make_loss_fn(config),
    batches=batches,
    prompt_tokens=run.prompt_tokens,
    steps=run.steps,
    prompt_sampler=prompt_sampler(config),
    on_start=started,
  )
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


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  checkpoint: Optional[str] = None,
  output_dir: Optional[str] = None,
  on_start: Optional[Callable[[int], None]] = None,
) -> dict:
  """Evaluates the latest checkpoint of `workdir` (or `checkpoint`: a step number or a path
  to `<run>/checkpoints[/<step>]`); writes results.json + confusion_matrix.png to
  `output_dir` (default: `workdir`). `on_start(step)` is called once it is restored."""
  run_dir, step = checkpointing.locate(workdir, checkpoint)
  run = setup(config)
  graphdef, state = restore_state(config, run.mesh, run_dir, step)
  if on_start is not None:
    on_start(int(jax.device_get(state.step)))
  output_dir = output_dir or workdir
  results = _evaluate(config, run, graphdef, state, output_dir)
  if jax.process_index() == 0:
    evaluate.write_results(results, output_dir)
  return results


def main(argv):
  if len(argv) > 1:
    print_error(f'unexpected arguments: {" ".join(argv[1:])}')
    return 1
  # Keep TensorFlow (used by the input pipeline) off accelerators.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass
  console = logging.get_absl_handler()
  if FLAGS.quiet_libraries:
    console.addFilter(_DropLibraryInfo(FLAGS.quiet_libraries))
  console.addFilter(_DropOrbaxTracebacks())
  held = _HeldLog(console)
  config = FLAGS.config
  logging.info('Config:\n%s', config)
  try:
    if FLAGS.mode == 'eval':
      evaluate_checkpoint(
        config,
        FLAGS.workdir,
        checkpoint=FLAGS.checkpoint,
        output_dir=FLAGS.output_dir,
        on_start=held.release,
      )
    else:
      train_and_evaluate(
        config, FLAGS.workdir, evaluate_after=FLAGS.mode != 'train_only', on_start=held.release
      )
  except USER_ERRORS as e:
    # The user's to fix, and the message says what: no traceback.
    held.discard()
    print_error(e)
    return 1
  except KeyboardInterrupt:  # outside the training loop, which saves and stops
    held.discard()
    print_error('interrupted')
    return EXIT_INTERRUPTED
  except BaseException:
    held.release()  # the context of a traceback
    raise
  held.release()
  return 0


if __name__ == '__main__':
  define_flags()
  run(main)
