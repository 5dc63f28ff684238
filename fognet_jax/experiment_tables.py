"""The Table 5 tables: their rows, the paper's orderings, and the reports of finished runs.

`TABLES` holds every table's rows (variant tokens and the paper's numbers) and `ORDERINGS`
the orderings of Top-1 the paper states; a `Job` is one (row, seed) of a table.
`write_tables` turns the finished jobs into WORKDIR/table_<name>.md / .json / .png
(`collect`: mean ± sample std over seeds; `check_orderings`; `plot_table`).
`fognet_jax.experiments` plans and runs the jobs and rewrites the tables after each.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any
from typing import Sequence

import ml_collections
import numpy as np

from fognet_jax import evaluate

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
    return os.path.join(self.eval_dir, evaluate.RESULTS_FILE)


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
