r"""The paper's Table 5 ablations as one command: every row an ordinary run, several seeds.

  python -m fognet_jax.experiments --config=configs/synthetic.py --tables=5a,5b,5c,5f \
      --seeds=0,1,2 --workdir=runs/tables
  python -m fognet_jax.experiments --config=configs/fogact.py --tables=5a,5b,5c,5f \
      --seeds=0,1,2 --workdir=runs/fogact_tables     # the paper's recipe on FogAct

A row is a list of variant tokens (`apply_variant` in configs/fogact.py) appended to the
config's own; `experiment_tables.TABLES` holds every table's rows, fixed before any result is
seen. Every row of every table runs the same recipe for the same number of steps (`--steps`,
see `DEFAULT_STEPS`), through `main.train_and_evaluate` / `main.evaluate_checkpoint`: the code
path of `python -m fognet_jax.main`.

Runs are shared: rows whose training configs are equal (e.g. Table 5a's full FogNet, 5b's
last row and 5f's "multi" row; 5b's clean-trained ActionCLIP tested on the clean and on the
foggy stream) train once per seed, in

  WORKDIR/runs/<short description>-<hash of the training config>/seed<k>/

and every further test setting of a trained run is an evaluation of its last checkpoint,
written to `eval-<hash>/results.json` inside the run. A run with results.json is not trained
again; an interrupted one resumes from its checkpoints. After every run the tables are
rewritten from what has finished (`experiment_tables.write_tables`):

  WORKDIR/table_5a.md / .json   mean ± sample std (ddof=1) over seeds of Top-1 / Top-5 (%),
                                the per-seed values, the paper's numbers, the run length
  WORKDIR/table_5a.png          Top-1 / Top-5 bars (mean) with one dot per seed
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Callable
from typing import Optional
from typing import Sequence

import ml_collections
from absl import app
from absl import flags
from ml_collections import config_flags

from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import experiment_tables
from fognet_jax import main as main_lib

# Run length per dataset when --steps is not given; datasets not listed keep their recipe's
# (configs/synthetic.py: its fine-tuning length; configs/fogact.py: 30 epochs). The
# from-scratch tables of benchmarks/RESULTS.md ran `--config=configs/synthetic.py:scratch
# --steps=1000`.
DEFAULT_STEPS: dict[str, int] = {}

RESULTS_FILE = evaluate.RESULTS_FILE

# --config (the base `file.py[:variant]`, whose rows add tokens; `--config.KEY=VALUE`
# overrides apply to every row, e.g. --config.data.manual_dir) and --workdir are
# fognet_jax.main's flags.
_TABLES = flags.DEFINE_list(
  'tables', ['5a', '5b', '5c', '5f'], f'Tables to run, of {list(experiment_tables.TABLES)}.'
)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed) of every row.')
_STEPS = flags.DEFINE_integer(
  'steps',
  None,
  'train.num_train_steps of every run; default: '
  "DEFAULT_STEPS of the dataset, else the recipe's own length.",
)


# ------------------------------------------------------------------------------ planning


def row_config(
  base: str,
  tokens: Sequence[str],
  *,
  seed: int,
  steps: Optional[int],
  overrides: Optional[dict] = None,
) -> ml_collections.ConfigDict:
  """The config of one row: `base` ('file.py[:variant]') with `tokens` appended, then the
  command line's `overrides` ({'data.manual_dir': ...})."""
  path, _, arg = base.partition(':')
  arg = ','.join([t for t in arg.split(',') if t] + list(tokens))
  config = config_lib.load_config(f'{path}:{arg}' if arg else path)
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split('.')
    block = config
    for name in parents:
      block = block[name]
    block[leaf] = value
  config.seed = int(seed)
  if steps is not None:
    config.train.num_train_steps = int(steps)
  return config


def _digest(d: dict) -> str:
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


# Keys added to the recipe after runs were made, with the value that reproduces the older
# behaviour: at that value they hash as if absent, so finished runs keep their directories.
HASH_NEUTRAL = {
  ('model', 'fas', 'concat'): 'tokens',
  ('model', 'residual_dtype'): None,
  ('train', 'fusion_lr_ratio'): 1.0,
  ('train', 'fusion_pattern'): r'(^|/)temporal(/|$)',
}


def _canonical(config: ml_collections.ConfigDict) -> dict:
  d = config.to_dict()
  d.pop('seed', None)
  # The perf keys hash at the places runs made before the `perf` block kept them.
  perf = d.pop('perf', {})
  for key, ((block, old), _) in config_lib.PERF_KEYS.items():
    if key in perf and isinstance(d.get(block), dict):
      d[block][old] = perf[key]
  for (*parents, leaf), neutral in HASH_NEUTRAL.items():
    block = d
    for name in parents:
      block = block.get(name) if isinstance(block, dict) else None
    if isinstance(block, dict) and block.get(leaf, neutral) == neutral:
      block.pop(leaf, None)
  return d


def train_key(config: ml_collections.ConfigDict) -> str:
  """Hash of everything that shapes training (the config without `eval` and `seed`)."""
  d = _canonical(config)
  d.pop('eval', None)
  return _digest(d)


def eval_key(config: ml_collections.ConfigDict) -> str:
  """Hash of the whole config but the seed: a trained run and one test setting."""
  return _digest(_canonical(config))


def describe(config: ml_collections.ConfigDict) -> str:
  """A short readable name of a training config (the run directory's prefix)."""
  m, d = config.model, config.data
  if m.arch == 'actionclip':
    parts = ['actionclip', m.train_stream.replace('+', '-')]
  else:
    parts = ['fognet', '-'.join(x for x in ('fas', 'me', 'csa') if m[x].enabled) or 'none']
    if m.fas.enabled and m.fas.get('concat', 'tokens') != 'channels':
      parts.append(f'fas-{m.fas.get("concat", "tokens")}')
  if m.get('temporal_fusion', 'mean') != 'mean':
    parts.append(str(m.temporal_fusion))
  if d.get('train_sim_fog'):
    parts.append('sim')
  if d.get('fog') not in (None, '', 'multi', 'all'):
    parts.append(str(d.fog))
  if d.get('perspective'):
    parts.append(str(d.perspective).replace(',', '-'))
  if d.get('replicate_to_full'):
    parts.append('rep')
  return '_'.join(parts)


def plan(
  base: str,
  tables: Sequence[str],
  seeds: Sequence[int],
  workdir: str,
  steps: Optional[int],
  overrides: Optional[dict] = None,
) -> list[experiment_tables.Job]:
  """Every (row, seed) job, seed-major (all rows of seed 0 first, so early tables are whole)."""
  unknown = [t for t in tables if t not in experiment_tables.TABLES]
  if unknown:
    raise ValueError(
      f'--tables: unknown table(s) {unknown}; known: {list(experiment_tables.TABLES)}'
    )
  jobs = []
  for seed in seeds:
    for table in tables:
      for label, tokens, _ in experiment_tables.TABLES[table]['rows']:
        config = row_config(base, tokens, seed=seed, steps=steps, overrides=overrides)
        run_dir = os.path.join(
          workdir, 'runs', f'{describe(config)}-{train_key(config)}', f'seed{seed}'
        )
        jobs.append(
          experiment_tables.Job(
            table,
            label,
            list(tokens),
            int(seed),
            config,
            run_dir,
            os.path.join(run_dir, f'eval-{eval_key(config)}'),
          )
        )
  return jobs


def steps_override(base: str, steps: Optional[int]) -> tuple[Optional[int], str]:
  """(train.num_train_steps override or None, where the run length comes from)."""
  if steps is not None:
    return steps, '--steps'
  dataset = config_lib.load_config(base).data.dataset
  if dataset in DEFAULT_STEPS:
    return DEFAULT_STEPS[dataset], f'experiments.DEFAULT_STEPS[{dataset!r}]'
  return None, 'the recipe'


# ------------------------------------------------------------------------------ running

TrainFn = Callable[[ml_collections.ConfigDict, str], dict]
EvalFn = Callable[..., dict]


def _train(config, run_dir):
  return main_lib.train_and_evaluate(config, run_dir)


def _evaluate(config, run_dir, output_dir):
  return main_lib.evaluate_checkpoint(config, run_dir, output_dir=output_dir)


def run_job(
  job: experiment_tables.Job, *, train_fn: TrainFn = _train, eval_fn: EvalFn = _evaluate
) -> str:
  """Brings `job` to a results file; returns what was done: 'done', 'trained' or 'evaluated'.

  The run trains (resuming) unless its results.json exists; its first test setting is the one
  `train_fn` evaluated (that results.json, recorded with its eval key), every other one an
  `eval_fn` of the last checkpoint.
  """
  if os.path.exists(job.results_path):
    return 'done'
  run_results = os.path.join(job.run_dir, RESULTS_FILE)
  done = 'evaluated'
  if not os.path.exists(run_results):
    results = train_fn(job.config, job.run_dir)
    if not results or not os.path.exists(run_results):
      raise RuntimeError(
        f'run {job.run_dir} stopped before its evaluation; run the command again to resume it'
      )
    with open(os.path.join(job.run_dir, 'eval_key.txt'), 'w') as f:
      f.write(eval_key(job.config))
    done = 'trained'
  key_file = os.path.join(job.run_dir, 'eval_key.txt')
  first_key = open(key_file).read().strip() if os.path.exists(key_file) else None
  os.makedirs(job.eval_dir, exist_ok=True)
  if first_key == eval_key(job.config):
    tmp = job.results_path + '.tmp'
    shutil.copyfile(run_results, tmp)
    os.replace(tmp, job.results_path)
  else:
    eval_fn(job.config, job.run_dir, output_dir=job.eval_dir)
    if not os.path.exists(job.results_path):
      raise RuntimeError(f'the evaluation of {job.run_dir} wrote no {job.results_path}')
  return done


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def run_all(
  jobs: Sequence[experiment_tables.Job],
  workdir: str,
  *,
  steps_info: dict,
  train_fn: TrainFn = _train,
  eval_fn: EvalFn = _evaluate,
  log: Callable[[str], None] = print,
) -> dict[str, dict]:
  """Runs every job in order, rewriting the tables after each; returns the tables."""
  trainings = {j.run_dir for j in jobs if not os.path.exists(os.path.join(j.run_dir, RESULTS_FILE))}
  left = len(trainings)
  t0, spent, trained = time.time(), 0.0, 0
  tables = {}
  for i, job in enumerate(jobs):
    status = (
      'finished'
      if os.path.exists(job.results_path)
      else ('evaluating' if os.path.exists(os.path.join(job.run_dir, RESULTS_FILE)) else 'training')
    )
    eta = f'ETA {_fmt_time(spent / trained * left)}' if trained else 'ETA after the first run'
    log(
      f'[{i + 1}/{len(jobs)}] table {job.table} | {job.row} | seed {job.seed}: {status} '
      f'({len(trainings) - left}/{len(trainings)} runs trained, elapsed '
      f'{_fmt_time(time.time() - t0)}, {eta}) -> {job.run_dir}'
    )
    start = time.time()
    done = run_job(job, train_fn=train_fn, eval_fn=eval_fn)
    if done == 'trained':
      left -= 1
      trained += 1
      spent += time.time() - start
    tables = experiment_tables.write_tables(jobs, workdir, steps_info=steps_info)
  log(f'all {len(jobs)} rows x seeds done in {_fmt_time(time.time() - t0)}; tables in {workdir}')
  return tables


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:  # keep TensorFlow (the input pipeline's) off accelerators, as fognet_jax.main does
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass
  config_flag = flags.FLAGS['config']
  base = config_flags.get_config_filename(config_flag)
  overrides = config_flags.get_override_values(config_flag)
  workdir = flags.FLAGS.workdir
  steps, source = steps_override(base, _STEPS.value)
  seeds = [int(s) for s in _SEEDS.value]
  jobs = plan(base, _TABLES.value, seeds, workdir, steps, overrides)
  steps_info = dict(
    config=base,
    overrides={k: str(v) for k, v in overrides.items()},
    num_train_steps=steps,
    steps_from=source,
  )
  run_all(jobs, workdir, steps_info=steps_info)


if __name__ == '__main__':
  main_lib.define_flags()  # --config, --workdir (and main's other flags, unused here)
  main_lib.run(main)  # main's flag parsing: a user error is one `error:` line
