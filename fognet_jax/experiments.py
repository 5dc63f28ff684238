r"""The paper's Table 5 ablations as one command: every row an ordinary run, several seeds.

  python -m fognet_jax.experiments --config=configs/synthetic.py --tables=5a,5b,5c,5f \
      --seeds=0,1,2 --workdir=runs/tables
  python -m fognet_jax.experiments --config=configs/fogact.py --tables=5a,5b,5c,5f \
      --seeds=0,1,2 --workdir=runs/fogact_tables     # the paper's recipe on FogAct

A row is a list of variant tokens (`apply_variant` in configs/fogact.py) appended to the
config's own; `TABLES` below holds every table's rows, fixed before any result is seen. Every
row of every table runs the same recipe for the same number of steps (`--steps`, see
`DEFAULT_STEPS`), through `main.train_and_evaluate` / `main.evaluate_checkpoint`: the code path
of `python -m fognet_jax.main`.

Runs are shared: rows whose training configs are equal (e.g. Table 5a's full FogNet, 5b's
last row and 5f's "multi" row; 5b's clean-trained ActionCLIP tested on the clean and on the
foggy stream) train once per seed, in

  WORKDIR/runs/<short description>-<hash of the training config>/seed<k>/

and every further test setting of a trained run is an evaluation of its last checkpoint,
written to `eval-<hash>/results.json` inside the run. A run with results.json is not trained
again; an interrupted one resumes from its checkpoints. After every run the tables are
rewritten from what has finished:

  WORKDIR/table_5a.md / .json   mean ± sample std (ddof=1) over seeds of Top-1 / Top-5 (%),
                                the per-seed values, the paper's numbers, the run length
  WORKDIR/table_5a.png          Top-1 / Top-5 bars (mean) with one dot per seed
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from fognet_jax import config_lib
from fognet_jax import evaluate
from fognet_jax import main as main_lib

# Each table: its rows as (label, variant tokens, the paper's (Top-1, Top-5) on FogAct, or None).
# Tokens are those of configs/fogact.py's apply_variant; [] is the config as given (FogNet,
# FAS + ME + CSA with FAS over channel-joined streams, trained on clean + foggy pairs, tested
# on the foggy stream). "(tokens)" rows read FAS's [v_c ; v_f] as 2T tokens instead.
TABLES: dict[str, dict[str, Any]] = {
  '5a': dict(
    title='Table 5a: FogNet components (tested on foggy video)',
    rows=[
      ('Baseline (ActionCLIP)', ['baseline'], (75.0, 95.7)),
      # Control, not in the paper: ActionCLIP with its released temporal fusion (a
      # transformer over the frames, at 10x the learning rate).
      ('Baseline, transformer fusion', ['baseline', 'fusion=transformer'], None),
      ('FAS', ['modules=fas'], (86.9, 98.9)),
      ('FAS (tokens)', ['modules=fas', 'fas=tokens'], (86.9, 98.9)),
      ('ME', ['modules=me'], (79.4, 97.2)),
      ('CSA', ['modules=csa'], (84.1, 98.5)),
      ('FAS + ME', ['modules=fas+me'], (88.1, 99.4)),
      ('FAS + ME (tokens)', ['modules=fas+me', 'fas=tokens'], (88.1, 99.4)),
      ('FAS + ME + CSA', [], (88.7, 99.4)),
      ('FAS + ME + CSA (tokens)', ['fas=tokens'], (88.7, 99.4)),
    ],
  ),
  '5b': dict(
    title='Table 5b: training / test inputs',
    rows=[
      ('ActionCLIP clean -> clean', ['baseline', 'train=clean', 'test=clean'], (86.7, 98.9)),
      ('ActionCLIP foggy -> foggy', ['baseline'], (75.0, 95.7)),
      ('ActionCLIP clean -> foggy', ['baseline', 'train=clean'], (59.8, 85.9)),
      ('ActionCLIP clean+foggy -> foggy', ['baseline', 'train=clean+foggy'], (75.7, 96.3)),
      ('FogNet clean+sim. -> foggy', ['sim_fog'], (71.5, 93.6)),
      ('FogNet clean+foggy -> foggy', [], (88.7, 99.4)),
    ],
  ),
  '5c': dict(
    title='Table 5c: training perspectives (tested on all four)',
    rows=[
      ('Single (front, replicated to full size)', ['persp=front', 'replicate'], (52.7, 79.4)),
      ('Four', [], (88.7, 99.4)),
    ],
  ),
  # Not in the paper, to explain 5a: the baseline with FogNet's loss and the two-stream
  # model with no module separate the loss (KL vs eqs. 8-10) and the second stream from the
  # modules.
  '5a-diag': dict(
    title='Table 5a diagnostics (not in the paper): loss, second stream',
    rows=[
      ('Baseline with eqs. 8-10 loss', ['baseline', 'fognet_loss'], None),
      ('Two streams, no module', ['modules=none'], None),
    ],
  ),
  '5f': dict(
    title='Table 5f: training fog intensity (tested on light + dense)',
    rows=[
      ('Light (replicated to full size)', ['light', 'replicate'], (66.0, 87.2)),
      ('Dense (replicated to full size)', ['dense', 'replicate'], (67.5, 92.2)),
      ('Multi', [], (88.7, 99.4)),
    ],
  ),
}

# The orderings of Top-1 that the paper states, per table: (row A, '>' or '>=', row B).
ORDERINGS: dict[str, list[tuple[str, str, str]]] = {
  '5a': [
    ('FAS + ME + CSA', '>', 'FAS'),
    ('FAS', '>', 'Baseline (ActionCLIP)'),
    ('ME', '>=', 'Baseline (ActionCLIP)'),
    ('CSA', '>=', 'Baseline (ActionCLIP)'),
    ('FAS + ME + CSA', '>', 'Baseline, transformer fusion'),
  ],
  '5b': [
    ('ActionCLIP clean -> clean', '>', 'ActionCLIP clean -> foggy'),
    ('FogNet clean+foggy -> foggy', '>', 'ActionCLIP foggy -> foggy'),
    ('ActionCLIP foggy -> foggy', '>', 'ActionCLIP clean -> foggy'),
    ('FogNet clean+foggy -> foggy', '>', 'FogNet clean+sim. -> foggy'),
  ],
  '5c': [('Four', '>', 'Single (front, replicated to full size)')],
  '5f': [
    ('Multi', '>', 'Dense (replicated to full size)'),
    ('Dense (replicated to full size)', '>', 'Light (replicated to full size)'),
  ],
}

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
  'tables', ['5a', '5b', '5c', '5f'], f'Tables to run, of {list(TABLES)}.'
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


@dataclasses.dataclass
class Job:
  """One (table row, seed): a training run (maybe shared) and one evaluation of it."""

  table: str
  row: str
  tokens: list
  seed: int
  config: ml_collections.ConfigDict
  run_dir: str
  eval_dir: str

  @property
  def results_path(self) -> str:
    return os.path.join(self.eval_dir, RESULTS_FILE)


def plan(
  base: str,
  tables: Sequence[str],
  seeds: Sequence[int],
  workdir: str,
  steps: Optional[int],
  overrides: Optional[dict] = None,
) -> list[Job]:
  """Every (row, seed) job, seed-major (all rows of seed 0 first, so early tables are whole)."""
  unknown = [t for t in tables if t not in TABLES]
  if unknown:
    raise ValueError(f'--tables: unknown table(s) {unknown}; known: {list(TABLES)}')
  jobs = []
  for seed in seeds:
    for table in tables:
      for label, tokens, _ in TABLES[table]['rows']:
        config = row_config(base, tokens, seed=seed, steps=steps, overrides=overrides)
        run_dir = os.path.join(
          workdir, 'runs', f'{describe(config)}-{train_key(config)}', f'seed{seed}'
        )
        jobs.append(
          Job(
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


def run_job(job: Job, *, train_fn: TrainFn = _train, eval_fn: EvalFn = _evaluate) -> str:
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
  jobs: Sequence[Job],
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
    tables = write_tables(jobs, workdir, steps_info=steps_info)
  log(f'all {len(jobs)} rows x seeds done in {_fmt_time(time.time() - t0)}; tables in {workdir}')
  return tables


# ------------------------------------------------------------------------------ tables


def collect(jobs: Sequence[Job], table: str) -> list[dict]:
  """Rows of `table` with the per-seed Top-1 / Top-5 (%) of every finished job."""
  rows = []
  for label, tokens, paper in TABLES[table]['rows']:
    mine = [j for j in jobs if j.table == table and j.row == label]
    seeds, top1, top5, dirs = [], [], [], []
    for j in mine:
      if os.path.exists(j.results_path):
        with open(j.results_path) as f:
          r = json.load(f)
        seeds.append(j.seed)
        top1.append(100.0 * r['top1'])
        top5.append(100.0 * r['top5'])
        dirs.append(
          os.path.relpath(j.eval_dir, os.path.dirname(os.path.dirname(os.path.dirname(j.run_dir))))
        )
    rows.append(
      dict(
        row=label,
        tokens=list(tokens),
        seeds=seeds,
        top1=top1,
        top5=top5,
        top1_mean=_mean(top1),
        top1_std=_std(top1),
        top5_mean=_mean(top5),
        top5_std=_std(top5),
        paper_top1=paper[0] if paper else None,
        paper_top5=paper[1] if paper else None,
        results=dirs,
      )
    )
  return rows


def check_orderings(rows: Sequence[dict], table: str) -> list[dict]:
  """The paper's orderings of `table` on the Top-1 of `rows` (as `collect` returns them).

  An ordering holds when the means satisfy it. Its margin is (mean A - mean B) in units of
  the seed std, sqrt((std_A^2 + std_B^2) / 2); None where a row has under two seeds.
  """
  by_row = {r['row']: r for r in rows}
  out = []
  for a, op, b in ORDERINGS.get(table, []):
    ra, rb = by_row[a], by_row[b]
    ma, mb = ra['top1_mean'], rb['top1_mean']
    entry = dict(a=a, op=op, b=b, holds=None, difference=None, margin_std=None)
    if ma is not None and mb is not None:
      entry['difference'] = ma - mb
      entry['holds'] = bool(ma > mb if op == '>' else ma >= mb)
      sa, sb = ra['top1_std'], rb['top1_std']
      if sa is not None and sb is not None:
        pooled = float(np.sqrt((sa**2 + sb**2) / 2))
        entry['margin_std'] = (ma - mb) / pooled if pooled > 0 else None
    out.append(entry)
  return out


def _verdict(entry: dict) -> str:
  if entry['holds'] is None:
    return 'not run yet'
  text = 'holds' if entry['holds'] else 'does not hold'
  diff = f'{entry["difference"]:+.1f} points'
  if entry['margin_std'] is not None:
    diff += f', {entry["margin_std"]:+.1f} σ'
  return f'{text} ({diff})'


def _mean(x):
  return float(np.mean(x)) if x else None


def _std(x):
  """Sample std (ddof=1); None below two seeds, where it is undefined."""
  return float(np.std(x, ddof=1)) if len(x) > 1 else None


def _pm(mean, std):
  if mean is None:
    return '–'
  return f'{mean:.1f}' if std is None else f'{mean:.1f} ± {std:.1f}'


def write_tables(jobs: Sequence[Job], workdir: str, *, steps_info: dict) -> dict[str, dict]:
  """table_<name>.md / .json / .png for every table of `jobs`; returns the JSON contents."""
  os.makedirs(workdir, exist_ok=True)
  out = {}
  for table in dict.fromkeys(j.table for j in jobs):
    rows = collect(jobs, table)
    seeds = sorted({j.seed for j in jobs if j.table == table})
    orderings = check_orderings(rows, table)
    data = dict(
      table=table,
      title=TABLES[table]['title'],
      seeds=seeds,
      metric='accuracy (%)',
      std='sample standard deviation over seeds (ddof=1)',
      **steps_info,
      rows=rows,
      orderings=orderings,
    )
    base = os.path.join(workdir, f'table_{table}')
    with open(base + '.json', 'w') as f:
      json.dump(data, f, indent=2)
    lines = [
      f'## {data["title"]}',
      '',
      f'Seeds {seeds}; {steps_info.get("num_train_steps") or "recipe"} training steps '
      f'per run ({steps_info.get("steps_from")}); config `{steps_info.get("config")}`. '
      "Mean ± sample std over the finished seeds; the paper's numbers are FogAct, "
      'ViT-B/16.',
      '',
      '| row | variant | Top-1 (%) | Top-5 (%) | Top-1 per seed | paper Top-1 / Top-5 |',
      '|---|---|---|---|---|---|',
    ]
    for r in rows:
      per = ', '.join(f'{v:.1f}' for v in r['top1']) or '–'
      paper = '–' if r['paper_top1'] is None else f'{r["paper_top1"]} / {r["paper_top5"]}'
      lines.append(
        f'| {r["row"]} | `{",".join(r["tokens"]) or "-"}` | '
        f'{_pm(r["top1_mean"], r["top1_std"])} | {_pm(r["top5_mean"], r["top5_std"])} | '
        f'{per} | {paper} |'
      )
    if orderings:
      lines += [
        '',
        "The paper's orderings (Top-1; margin = difference of the means in units "
        'of the seed std, sqrt((s_A² + s_B²) / 2)):',
        '',
      ]
      lines += [f'- {o["a"]} {o["op"]} {o["b"]}: {_verdict(o)}' for o in orderings]
    with open(base + '.md', 'w') as f:
      f.write('\n'.join(lines) + '\n')
    plot_table(data, base + '.png')
    out[table] = data
  return out


def plot_table(data: dict, path: str) -> None:
  """Top-1 and Top-5 bars (mean over seeds) with one dot per seed (matplotlib, Agg)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = data['rows']
  n = len(rows)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * n + 2), 4.5), dpi=100)
  width = 0.38
  x = np.arange(n)
  for k, (metric, colour) in enumerate((('top1', 'tab:blue'), ('top5', 'tab:orange'))):
    pos = x + (k - 0.5) * width
    means = [r[f'{metric}_mean'] if r[f'{metric}_mean'] is not None else 0.0 for r in rows]
    ax.bar(
      pos, means, width, color=colour, alpha=0.6, label=f'{metric.replace("top", "Top-")} mean'
    )
    for p, r in zip(pos, rows):
      vals = r[metric]
      if vals:
        jitter = np.linspace(-0.08, 0.08, len(vals)) if len(vals) > 1 else [0.0]
        ax.scatter(p + np.asarray(jitter), vals, color='black', s=14, zorder=3)
  ax.set_xticks(x)
  ax.set_xticklabels([r['row'] for r in rows], rotation=20, ha='right', fontsize=8)
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 100)
  ax.set_title(f'{data["title"]}\nseeds {data["seeds"]} (dots: one seed)', fontsize=9)
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


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
