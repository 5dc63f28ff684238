r"""Top-1 / Top-5 of trained runs on their clean test clips fogged at a range of densities.

  python -m fognet_jax.robustness --workdir=RUN[,RUN...] --densities=0,0.5,1,2,3,4 --out=DIR
      [--seed=S] [--airlight=A]

For every run directory (written by `python -m fognet_jax.main`: config.json, checkpoints/)
the latest checkpoint is evaluated, as `--mode=eval` does (the run's config, its evaluation
views, batch size and prompt templates, the foggy-only path `FogNet.predict`), on the CLEAN
clips of the run's test split (`data.eval_split`, with its `data.eval_*` filters) fogged at
each density beta with the builders' atmospheric scattering model (`tfds_fogact.fog`):

    I = J t + A (1 - t),    t = exp(-beta d)

applied to the decoded uint8 frames before the evaluation's own crop, resize and
normalisation. No builder stores a depth map (the generated benchmark's renderer has one but
the dataset does not keep it), so the fog is homogeneous: d = 1 and one transmission
exp(-beta) for every pixel (`fog_frames` takes a depth map for data that has one). beta = 0
is the clean clip itself, i.e. `--mode=eval --config.eval.stream=clean`. The airlight A is
`--airlight` (grey, every clip) or, by default, drawn per clip from the builders' airlight
range (AIRLIGHT_RANGE, each channel +-AIRLIGHT_TINT) by (`--seed`, clip index): the same
airlight at every density, the same fog on every run.

Output: one line per (run, density) with its Top-1 / Top-5; DIR/robustness.json
{runs: [{workdir, label, step, seed, densities, top1, top5}], groups, densities, seed,
airlight, ...} and DIR/robustness.png (Top-1 against density, one line per run; runs whose
config.json differ only in `seed` are one line, their mean, with a min-max band). A run
directory without a run or a checkpoint, or a density that is not a number >= 0, is one
`error: ...` line on stderr and exit status 1, before anything is loaded.
"""

from __future__ import annotations

import collections.abc
import io
import json
import math
import os
import sys
from typing import Optional
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that TF_CPP_MIN_LOG_LEVEL does not hide.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import ml_collections
import numpy as np
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from PIL import Image

from fognet_jax import checkpointing
from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import experiments
from fognet_jax import input_pipeline
from fognet_jax import main as main_lib
from fognet_jax import predict
from fognet_jax import records
from fognet_jax import sharding
from tfds_fogact import fog as fog_lib

FLAGS = flags.FLAGS
RESULTS_FILE = 'robustness.json'
PLOT_FILE = 'robustness.png'
AIRLIGHT_RANGE = (0.70, 0.95)  # the builders' light (0.70-0.85) and dense (0.80-0.95) presets
AIRLIGHT_TINT = 0.03  # per channel, as the presets


def _define_flags() -> None:
  flags.DEFINE_list(
    'workdir', None, 'Run directories (config.json, checkpoints/), comma-separated.'
  )
  flags.DEFINE_list(
    'densities',
    ['0', '0.5', '1', '2', '3', '4'],
    'Fog densities: the scattering coefficient beta (0 = no fog).',
  )
  flags.DEFINE_string('out', None, 'Output directory: robustness.json and robustness.png.')
  flags.DEFINE_integer('seed', 0, 'Seed of the per-clip airlight.')
  flags.DEFINE_float(
    'airlight',
    None,
    'One grey airlight in [0, 1] for every clip (default: drawn per clip from the seed).',
  )


# ------------------------------------------------------------------------------ fog


def fog_frames(frames: np.ndarray, beta: float, airlight, depth=None) -> np.ndarray:
  """uint8 frames (..., H, W, 3) in ASM fog of density `beta`; beta = 0 returns `frames`.

  `airlight`: grey or RGB in [0, 1]; `depth`: relative distance (H, W) in [0, 1], None =
  homogeneous fog (d = 1).
  """
  if beta == 0:
    return frames
  if depth is None:
    depth = np.ones(frames.shape[-3:-1], np.float32)
  return fog_lib.apply_fog(
    frames,
    intensity=fog_lib.FogParams(beta=beta, airlight=airlight),
    seed=0,
    depth=depth,
    heterogeneous=False,
  )


def clip_airlight(seed: int, index: int, airlight: Optional[float] = None):
  """The airlight of clip `index`: `airlight` when given, else drawn from (seed, index)."""
  if airlight is not None:
    return float(airlight)
  rng = np.random.default_rng([seed, index, 29])
  a = rng.uniform(*AIRLIGHT_RANGE) + rng.uniform(-AIRLIGHT_TINT, AIRLIGHT_TINT, size=3)
  return tuple(float(x) for x in np.clip(a, 0.0, 1.0))


class _FoggedFrames(collections.abc.Sequence):
  """A clip's encoded clean frames as encoded foggy ones (lossless PPM), the frame list
  `augment.make_eval_views` reads; a frame is decoded and fogged when it is read."""

  def __init__(self, encoded, beta: float, airlight):
    self._encoded, self._beta, self._airlight = encoded, beta, airlight

  def __len__(self):
    return len(self._encoded)

  def __getitem__(self, i):
    with Image.open(io.BytesIO(self._encoded[i])) as im:
      frame = np.asarray(im.convert('RGB'))
    buf = io.BytesIO()
    Image.fromarray(fog_frames(frame, self._beta, self._airlight)).save(buf, format='PPM')
    return buf.getvalue()


class FoggedSource(collections.abc.Sequence):
  """The examples `indices` of `source` with 'foggy' = their clean clip fogged at `beta`."""

  def __init__(self, source, indices, beta: float, *, seed: int, airlight=None):
    self.source, self.indices, self.beta = source, np.asarray(indices), beta
    self.seed, self.airlight = seed, airlight

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, k):
    index = int(self.indices[k])
    ex = self.source[index]
    frames = ex['clean']
    if self.beta > 0:
      frames = _FoggedFrames(frames, self.beta, clip_airlight(self.seed, index, self.airlight))
    return {'foggy': frames, 'label': ex['label']}


def eval_batches(
  config: ml_collections.ConfigDict, beta: float, *, seed: int = 0, airlight: Optional[float] = None
):
  """The evaluation batches of the run's test split, its clean clips fogged at `beta`."""
  data = config.data
  split = data.eval_split
  source = FoggedSource(
    records.source(data, split),
    records.indices(data, split, 'eval'),
    beta,
    seed=seed,
    airlight=airlight,
  )
  return input_pipeline.eval_iterator(
    data,
    batch_size=sharding.local_batch_size(config.eval.batch_size),
    source=source,
    stream='foggy',
    **input_pipeline.perf_options(config.perf),
  )


# ------------------------------------------------------------------------------ arguments


def parse_densities(values: Sequence[str]) -> list[float]:
  if not values:
    raise ValueError('--densities is empty: give fog densities beta >= 0, e.g. 0,1,2')
  out = []
  for v in values:
    try:
      beta = float(v)
    except ValueError:
      raise ValueError(f'--densities: {v!r} is not a number') from None
    if not math.isfinite(beta) or beta < 0:
      raise ValueError(f'--densities: {v!r} is not a density (a number >= 0)')
    out.append(beta)
  return out


def check_run(workdir: str) -> dict:
  """The run's config.json as a dict; FileNotFoundError naming what is missing."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdir: {workdir} is not a directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir} is not a training run directory')
  run_dir, _ = checkpointing.locate(workdir)
  ckpt_dir = os.path.join(run_dir, checkpointing.CHECKPOINT_DIR)
  if not any(name.isdigit() for name in os.listdir(ckpt_dir)):
    raise FileNotFoundError(f'no checkpoint in {ckpt_dir}')
  with open(path) as f:
    return config_lib.upgrade_saved_config(json.load(f))


# ------------------------------------------------------------------------------ runs


def evaluate_run(
  workdir: str,
  densities: Sequence[float],
  *,
  seed: int = 0,
  airlight: Optional[float] = None,
  out=None,
) -> dict:
  """{workdir, step, seed, densities, top1, top5, ...} of the latest checkpoint of `workdir`."""
  out = out or sys.stdout
  config = predict.load_config(workdir)
  run = main_lib.setup(config)
  run_dir, step = checkpointing.locate(workdir)
  graphdef, state = main_lib.restore_state(config, run.mesh, run_dir, step)
  top1, top5 = [], []
  for beta in densities:
    results = evaluate.evaluate_state(
      config,
      graphdef,
      state,
      mesh=run.mesh,
      class_names=run.data.class_names,
      prompt_tokens=run.prompt_tokens,
      batches=eval_batches(config, beta, seed=seed, airlight=airlight),
    )
    top1.append(results['top1'])
    top5.append(results['top5'])
    print(
      f'{workdir}  beta={beta:g}: Top-1 {100 * results["top1"]:.2f}%  '
      f'Top-5 {100 * results["top5"]:.2f}%',
      file=out,
      flush=True,
    )
  return {
    'workdir': workdir,
    'step': results['step'],
    'seed': config.get('seed'),
    'dataset': config.data.dataset,
    'split': config.data.eval_split,
    'num_videos': results['num_videos'],
    'chance': results['chance'],
    'densities': list(densities),
    'top1': top1,
    'top5': top5,
  }


def group_runs(configs: dict[str, dict]) -> list[dict]:
  """Runs whose configs are equal apart from 'seed', in first-seen order, each
  {label, workdirs}: `experiments.describe` of the config, the directory added where two
  groups would share a label."""
  groups: dict[str, list[str]] = {}
  for workdir, config in configs.items():
    key = json.dumps({k: v for k, v in config.items() if k != 'seed'}, sort_keys=True)
    groups.setdefault(key, []).append(workdir)
  out = []
  for workdirs in groups.values():
    label = experiments.describe(ml_collections.ConfigDict(configs[workdirs[0]]))
    out.append({'label': label, 'workdirs': workdirs})
  labels = [g['label'] for g in out]
  for g in out:
    if labels.count(g['label']) > 1:
      g['label'] += f' [{os.path.basename(os.path.commonpath(g["workdirs"]).rstrip("/"))}]'
    if len(g['workdirs']) > 1:
      g['label'] += f' ({len(g["workdirs"])} seeds)'
  return out


def plot(
  groups: list[dict],
  densities: Sequence[float],
  path: str,
  title: str = '',
  chance: Optional[float] = None,
) -> None:
  """Top-1 (%) against density: one line per group (mean), a min-max band over its seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
  for g in groups:
    (line,) = ax.plot(densities, 100 * np.asarray(g['top1_mean']), marker='o', label=g['label'])
    if len(g['workdirs']) > 1:
      ax.fill_between(
        densities,
        100 * np.asarray(g['top1_min']),
        100 * np.asarray(g['top1_max']),
        color=line.get_color(),
        alpha=0.2,
        linewidth=0,
      )
  if chance is not None:
    ax.axhline(100 * chance, color='grey', linestyle='--', linewidth=1, label='chance')
  ax.set_xlabel('fog density β (transmission exp(-β))')
  ax.set_ylabel('Top-1 (%)')
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run(
  workdirs: Sequence[str],
  densities: Sequence[float],
  out_dir: str,
  *,
  seed: int = 0,
  airlight: Optional[float] = None,
  out=None,
) -> dict:
  """Evaluates every run at every density; writes robustness.json and robustness.png."""
  configs = {w: check_run(w) for w in workdirs}
  runs = [evaluate_run(w, densities, seed=seed, airlight=airlight, out=out) for w in workdirs]
  by_dir = {r['workdir']: r for r in runs}
  groups = group_runs(configs)
  for g in groups:
    top1 = np.asarray([by_dir[w]['top1'] for w in g['workdirs']])
    for w in g['workdirs']:
      by_dir[w]['label'] = g['label']
    g.update(
      top1_mean=top1.mean(0).tolist(),
      top1_min=top1.min(0).tolist(),
      top1_max=top1.max(0).tolist(),
      top5_mean=np.mean([by_dir[w]['top5'] for w in g['workdirs']], 0).tolist(),
    )
  summary = {
    'runs': runs,
    'groups': groups,
    'densities': list(densities),
    'seed': seed,
    'airlight': airlight
    if airlight is not None
    else f'per clip from {list(AIRLIGHT_RANGE)} +-{AIRLIGHT_TINT} per channel (seed)',
    'fog': 'homogeneous ASM (d = 1): t = exp(-beta), on the clean test clips',
    'inference': 'foggy-only (FogNet.predict)',
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, RESULTS_FILE), 'w') as f:
    json.dump(summary, f, indent=2)
  chances = {r['chance'] for r in runs}
  datasets = sorted({f'{r["dataset"]} {r["split"]}' for r in runs})
  plot(
    groups,
    densities,
    os.path.join(out_dir, PLOT_FILE),
    title=f'{", ".join(datasets)}: clean test clips in homogeneous fog, foggy-only inference',
    chance=chances.pop() if len(chances) == 1 else None,
  )
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    if not FLAGS.workdir:
      raise ValueError('--workdir is empty: give one or more run directories')
    if not FLAGS.out:
      raise ValueError('--out is required: the directory for robustness.json / .png')
    if FLAGS.airlight is not None and not 0.0 <= FLAGS.airlight <= 1.0:
      raise ValueError(f'--airlight must be in [0, 1], got {FLAGS.airlight}')
    densities = parse_densities(FLAGS.densities)
    for workdir in FLAGS.workdir:
      check_run(workdir)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  logging.set_verbosity(logging.WARNING)  # the progress lines only
  run(FLAGS.workdir, densities, FLAGS.out, seed=FLAGS.seed, airlight=FLAGS.airlight)
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
