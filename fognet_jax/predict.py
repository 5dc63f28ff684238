r"""Recognise the action in video files with a trained run, from the foggy video alone.

  python -m fognet_jax.predict --workdir=RUN [--checkpoint=STEP] VIDEO [VIDEO ...] [--json]
      [--labels="a person jumping,a person bowing,..." | --labels_file=FILE] [--verbose]

Loads the run's config (`RUN/config.json`), its class names (`RUN/class_names.json`, or the
dataset's when the file is missing) and its latest checkpoint (or `--checkpoint`: a step or a
checkpoint directory). Each video is decoded with PyAV and cut into the evaluation views of
the run's config (`data.num_clips` x `data.num_crops` clips of `data.num_frames` frames, as
`evaluate` samples the test split); the class probabilities are the mean over views and
prompt templates of the foggy-only inference path (`FogNet.predict`).

Open vocabulary: `--labels` (comma-separated) or `--labels_file` (one label a line, blank
lines skipped) replaces the run's class names by any action names; they are ranked through
the text tower with the run's prompt templates (`main.class_prompt_tokens`), exactly as the
run's own classes are, so the run's class names given as labels reproduce the default output.

Output, per video: the top 5 classes with their probabilities; with `--json` one JSON object
per line: {"video": PATH, "top5": [[CLASS, PROB], ...], "num_frames": N} (N: frames
decoded). A file that is missing or not a video gets a one-line error on stderr naming it;
the other files are still processed and the exit status is 1. Bad labels (empty, repeated, a
missing labels file) are one `error:` line and exit status 1 before the model loads.

The command is quiet: no INFO log lines of the libraries (absl, JAX, Orbax), so stderr holds
the `error:` lines (and warnings, if any); `--verbose` shows the libraries' log lines too.
"""

from __future__ import annotations

import collections.abc
import io
import json
import logging as py_logging
import os
import sys
from typing import Optional
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that TF_CPP_MIN_LOG_LEVEL does not hide.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax
import ml_collections
import numpy as np
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from PIL import Image

from fognet_jax import augment
from fognet_jax import checkpointing
from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import main as main_lib
from fognet_jax import records
from fognet_jax import sharding
from tfds_fogact import video_io

FLAGS = flags.FLAGS
TOP_K = 5


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Run directory (config.json, checkpoints/).')
  flags.DEFINE_string('checkpoint', None, 'Checkpoint step or directory (default: the latest).')
  flags.DEFINE_bool('json', False, 'One JSON object per video and line.')
  flags.DEFINE_string(
    'labels',
    None,
    "Comma-separated action names to rank instead of the run's classes (open vocabulary).",
  )
  flags.DEFINE_string(
    'labels_file', None, "A file of action names, one a line, to rank instead of the run's classes."
  )
  flags.DEFINE_bool('verbose', False, "Show the libraries' log lines (absl, JAX, Orbax).")


class LabelError(ValueError):
  """Unusable --labels / --labels_file; the message is the user's error line."""


def parse_labels(
  labels: Optional[str] = None, labels_file: Optional[str] = None
) -> Optional[list[str]]:
  """The label list of `--labels` (comma-separated) or `--labels_file` (one a line); None
  when neither is given (the run's own classes)."""
  if labels is not None and labels_file is not None:
    raise LabelError('give --labels or --labels_file, not both')
  if labels is None and labels_file is None:
    return None
  if labels is not None:
    names, where = [x.strip() for x in labels.split(',')], '--labels'
    names = [x for x in names if x]
    if not names:
      raise LabelError('--labels is empty')
  else:
    if not os.path.isfile(labels_file):
      raise LabelError(f'{labels_file}: no such file')
    with open(labels_file, encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
    where = labels_file
    if not names:
      raise LabelError(f'{labels_file} holds no labels')
  seen = set()
  for name in names:
    if name in seen:
      raise LabelError(f'{where} names {name!r} twice')
    seen.add(name)
  return names


class _LazyPNG(collections.abc.Sequence):
  """Decoded frames as the encoded-frame list `augment.make_eval_views` reads (PNG: lossless);
  only the frames the views sample are encoded."""

  def __init__(self, frames: np.ndarray):
    self._frames = frames

  def __len__(self):
    return len(self._frames)

  def __getitem__(self, i):
    buf = io.BytesIO()
    Image.fromarray(self._frames[i]).save(buf, format='PNG', compress_level=1)
    return buf.getvalue()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: --workdir must be a training run directory')
  with open(path) as f:
    return ml_collections.ConfigDict(config_lib.upgrade_saved_config(json.load(f)))


def load_class_names(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  path = os.path.join(workdir, main_lib.CLASS_NAMES_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      return list(json.load(f))
  return list(records.prepare(config.data).class_names)  # runs from before the file existed


class Predictor:
  """A trained run's model, prompts and test views, applied to one video at a time."""

  def __init__(
    self, workdir: str, checkpoint: Optional[str] = None, labels: Optional[Sequence[str]] = None
  ):
    """`labels`: action names to rank instead of the run's classes (None: the run's)."""
    run_dir, step = checkpointing.locate(workdir, checkpoint)
    self.config = load_config(workdir)
    self.class_names = (
      list(labels) if labels is not None else load_class_names(self.config, workdir)
    )
    self.mesh = sharding.make_mesh(1)
    self.graphdef, state = main_lib.restore_state(self.config, self.mesh, run_dir, step)
    self.params, self.rest = state.params, state.rest
    self.step = int(jax.device_get(state.step))
    self.text_emb = evaluate.encode_prompts(
      self.graphdef,
      self.params,
      self.rest,
      mesh=self.mesh,
      prompt_tokens=main_lib.class_prompt_tokens(self.config, self.class_names),
      num_templates=self.config.eval.num_templates,
    )
    self._predict = evaluate.make_predict_step(self.graphdef, self.mesh)

  def probabilities(self, path: str) -> tuple[np.ndarray, int]:
    """(class probabilities (C,), frames decoded) of the video at `path`."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such file')
    frames, _ = video_io.read_video(path, short_side=self.config.data.image_size)
    views = augment.make_eval_views({'foggy': _LazyPNG(frames)}, self.config.data)
    probs = self._predict(self.params, self.rest, jax.device_put(views[None]), self.text_emb)
    return np.asarray(jax.device_get(probs))[0], len(frames)

  def top(self, probs: np.ndarray, k: int = TOP_K) -> list[list]:
    order = np.argsort(-probs, kind='stable')[:k]
    return [[self.class_names[i], float(probs[i])] for i in order]


def run(
  videos: Sequence[str],
  workdir: str,
  *,
  checkpoint: Optional[str] = None,
  as_json: bool = False,
  labels: Optional[Sequence[str]] = None,
  out=None,
  err=None,
) -> int:
  """Prints the predictions of `videos` over the run's classes or `labels`; returns the exit
  status (1 if any file failed)."""
  out, err = out or sys.stdout, err or sys.stderr
  predictor = Predictor(workdir, checkpoint, labels=labels)
  status = 0
  for path in videos:
    try:
      probs, n = predictor.probabilities(path)
    except (FileNotFoundError, video_io.VideoError, ValueError) as e:
      print(f'error: {e}', file=err)
      status = 1
      continue
    top = predictor.top(probs)
    if as_json:
      print(json.dumps({'video': path, 'top5': top, 'num_frames': n}), file=out)
    else:
      print(f'{path} ({n} frames, checkpoint step {predictor.step})', file=out)
      for name, p in top:
        print(f'  {p:6.3f}  {name}', file=out)
    out.flush()
  return status


def quiet_logs() -> None:
  """Only warnings and errors from absl and the Python loggers (JAX, Orbax)."""
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger().setLevel(py_logging.WARNING)
  for name in ('jax', 'orbax', 'absl'):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def main(argv):
  videos = argv[1:]
  if not videos:
    raise app.UsageError('give one or more video files')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if not FLAGS.verbose:
    quiet_logs()
  try:
    labels = parse_labels(FLAGS.labels, FLAGS.labels_file)
    return run(
      videos, FLAGS.workdir, checkpoint=FLAGS.checkpoint, as_json=FLAGS.json, labels=labels
    )
  except (FileNotFoundError, LabelError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  _define_flags()
  app.run(main)
