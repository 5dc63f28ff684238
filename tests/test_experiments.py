"""The experiments runner (fognet_jax/experiments.py, experiment_tables.py): planning, shared
runs, skip and resume, tables. The run functions are fakes with main.train_and_evaluate's
contract (train, resuming from the run directory's state, then write results.json), so this
runs in seconds."""

import json
import os

import numpy as np
import pytest

from fognet_jax import experiment_tables
from fognet_jax import experiments


class FakeRuns:
  """train_fn / eval_fn: a run of `num_train_steps` steps, 'checkpointed' after every step."""

  def __init__(self, crash_at=None):
    self.crash_at = crash_at  # (run_dir, step): raise there once, like a killed job
    self.train_calls, self.eval_calls, self.steps_done = [], [], {}

  @staticmethod
  def score(config):
    base = 0.2 + 0.1 * config.model.fas.enabled + 0.02 * config.seed
    return base + (0.3 if config.eval.stream == 'clean' else 0.0)

  def train(self, config, run_dir):
    self.train_calls.append(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    ckpt = os.path.join(run_dir, 'step.txt')
    step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
    while step < config.train.num_train_steps:
      if self.crash_at == (run_dir, step):
        self.crash_at = None
        raise KeyboardInterrupt('killed')
      step += 1
      self.steps_done[run_dir] = self.steps_done.get(run_dir, 0) + 1
      with open(ckpt, 'w') as f:
        f.write(str(step))
    results = {'top1': self.score(config), 'top5': 0.9, 'stream': config.eval.stream}
    with open(os.path.join(run_dir, 'results.json'), 'w') as f:
      json.dump(results, f)
    return results

  def evaluate(self, config, run_dir, output_dir):
    assert os.path.exists(os.path.join(run_dir, 'results.json')), 'evaluated before training'
    self.eval_calls.append((run_dir, config.eval.stream))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'results.json'), 'w') as f:
      json.dump({'top1': self.score(config), 'top5': 0.95, 'stream': config.eval.stream}, f)
    return {}


def _plan(tmp_path, tables=('5b',), seeds=(0, 1)):
  return experiments.plan('configs/synthetic.py', list(tables), list(seeds), str(tmp_path), 4)


def test_rows_are_the_papers_protocols(tmp_path):
  jobs = {(j.table, j.row): j.config for j in _plan(tmp_path, ('5a', '5b', '5c', '5f'), (0,))}
  full = jobs[('5a', 'FAS + ME + CSA')]
  assert full.model.arch == 'fognet' and full.loss.kind == 'fognet'
  assert full.model.fas.concat == 'channels'  # the default reading of eq. 1
  assert jobs[('5a', 'FAS + ME + CSA (tokens)')].model.fas.concat == 'tokens'
  assert jobs[('5a', 'FAS (tokens)')].model.fas.concat == 'tokens'
  base = jobs[('5a', 'Baseline (ActionCLIP)')]
  assert base.model.arch == 'actionclip' and base.loss.kind == 'actionclip_kl'
  assert base.model.temporal_fusion == 'mean' and base.train.fusion_lr_ratio == 1.0
  transf = jobs[('5a', 'Baseline, transformer fusion')]
  assert transf.model.arch == 'actionclip' and transf.model.temporal_fusion == 'transformer'
  assert transf.train.fusion_lr_ratio == 10.0  # ActionCLIP's f_ratio
  assert experiments.describe(transf) == 'actionclip_foggy_transformer'
  for cfg in jobs.values():  # every row fine-tunes the same pretrained towers
    assert cfg.model.init_from == jobs[('5a', 'FAS + ME + CSA')].model.init_from
  cc = jobs[('5b', 'ActionCLIP clean -> clean')]
  assert cc.model.train_stream == 'clean' and cc.eval.stream == 'clean'
  assert jobs[('5b', 'ActionCLIP clean+foggy -> foggy')].model.train_stream == 'clean+foggy'
  assert jobs[('5b', 'FogNet clean+sim. -> foggy')].data.train_sim_fog == 'homogeneous'
  single = jobs[('5c', 'Single (front, replicated to full size)')]
  assert single.data.perspective == 'front' and single.data.replicate_to_full
  for row in ('Light (replicated to full size)', 'Dense (replicated to full size)'):
    cfg = jobs[('5f', row)]
    assert cfg.data.fog in ('light', 'dense') and cfg.data.replicate_to_full
  for cfg in jobs.values():  # one common test set and one run length for every row
    assert cfg.data.eval_fog is None and cfg.data.eval_perspective is None
    assert cfg.train.num_train_steps == 4


def test_shared_runs_and_defaults(tmp_path):
  jobs = _plan(tmp_path, ('5a', '5b', '5f'), (0, 1, 2))
  assert len(jobs) == 57
  assert len({j.run_dir for j in jobs}) == 45  # 15 distinct trainings x 3 seeds
  assert len({j.eval_dir for j in jobs}) == 48  # + clean -> clean evaluations
  assert experiments.steps_override('configs/synthetic.py', None)[0] is None  # the recipe's
  assert experiments.steps_override('configs/fogact.py', None)[0] is None
  assert experiments.steps_override('configs/fogact.py', 7)[0] == 7
  with pytest.raises(ValueError, match='unknown table'):
    _plan(tmp_path, ('5z',))


def test_the_perf_block_keeps_the_run_directories():
  """Run directories are named by the hash of the training config; the perf keys hash at the
  places older runs kept them (data, model, mesh, train), so finished runs are found again."""
  fas = experiments.row_config('configs/fogact.py', ['modules=fas'], seed=0, steps=None)
  scratch = experiments.row_config('configs/synthetic.py:scratch', [], seed=0, steps=1000)
  assert (experiments.train_key(fas), experiments.eval_key(fas)) == ('656d2120e0', '6d63da8d62')
  assert (experiments.train_key(scratch), experiments.eval_key(scratch)) == (
    '57f3f68c77',
    'cdbbe8c922',
  )
  cudnn = experiments.row_config('configs/fogact.py', ['modules=fas'], seed=0, steps=None)
  cudnn.perf.attention_impl = 'cudnn'
  assert experiments.train_key(cudnn) != experiments.train_key(fas)


def test_keys_added_at_their_neutral_value_keep_the_run_directories(tmp_path):
  tokens = experiments.row_config(
    'configs/synthetic.py:scratch', ['modules=fas', 'fas=tokens'], seed=0, steps=4
  )
  older = experiments.row_config(
    'configs/synthetic.py:scratch', ['modules=fas', 'fas=tokens'], seed=0, steps=4
  )
  with older.unlocked():  # a config written before these keys existed
    del older.model.fas['concat']
    del older.train['fusion_lr_ratio']
    del older.train['fusion_pattern']
  assert experiments.train_key(tokens) == experiments.train_key(older)
  assert experiments.eval_key(tokens) == experiments.eval_key(older)
  channels = experiments.row_config(
    'configs/synthetic.py:scratch', ['modules=fas'], seed=0, steps=4
  )
  assert channels.model.fas.concat == 'channels'
  assert experiments.train_key(channels) != experiments.train_key(tokens)
  assert experiments.describe(channels) == 'fognet_fas'
  assert experiments.describe(tokens) == 'fognet_fas_fas-tokens'
  assert experiments.describe(older) == 'fognet_fas_fas-tokens'  # no key: 'tokens'
  jobs = {(j.table, j.row): j for j in _plan(tmp_path, ('5a', '5a-diag'), (0,))}
  assert jobs[('5a-diag', 'Two streams, no module')].config.model.arch == 'fognet'
  kl_free = jobs[('5a-diag', 'Baseline with eqs. 8-10 loss')].config
  assert kl_free.model.arch == 'actionclip' and kl_free.loss.kind == 'fognet'
  assert jobs[('5a', 'FAS (tokens)')].run_dir != jobs[('5a', 'FAS')].run_dir


def test_skip_finished_and_resume_interrupted(tmp_path):
  jobs = _plan(tmp_path)
  runs = sorted({j.run_dir for j in jobs})
  victim = [j.run_dir for j in jobs][3]
  fake = FakeRuns(crash_at=(victim, 2))
  info = dict(config='configs/synthetic.py', num_train_steps=4, steps_from='test')
  with pytest.raises(KeyboardInterrupt):
    experiments.run_all(
      jobs,
      str(tmp_path),
      steps_info=info,
      train_fn=fake.train,
      eval_fn=fake.evaluate,
      log=lambda s: None,
    )
  finished_before = set(fake.train_calls) - {victim}
  fake.train_calls.clear()
  lines = []
  experiments.run_all(
    jobs,
    str(tmp_path),
    steps_info=info,
    train_fn=fake.train,
    eval_fn=fake.evaluate,
    log=lines.append,
  )
  # finished runs are not trained again; the interrupted one continues where it stopped
  assert not set(fake.train_calls) & finished_before
  assert victim in fake.train_calls
  assert all(fake.steps_done[r] == 4 for r in runs)
  assert set(fake.steps_done) == set(runs)
  # a third invocation does nothing
  fake.train_calls.clear()
  n_eval = len(fake.eval_calls)
  experiments.run_all(
    jobs,
    str(tmp_path),
    steps_info=info,
    train_fn=fake.train,
    eval_fn=fake.evaluate,
    log=lines.append,
  )
  assert not fake.train_calls and len(fake.eval_calls) == n_eval
  # the clean-trained ActionCLIP trains once per seed (its first row tests on the clean
  # stream) and its checkpoint is evaluated again on the foggy stream
  assert sorted(s for _, s in fake.eval_calls) == ['foggy', 'foggy']
  assert {d for d, _ in fake.eval_calls} == {
    j.run_dir for j in jobs if j.row == 'ActionCLIP clean -> clean'
  }
  assert any('ETA' in l and 'seed' in l for l in lines)


def test_tables_mean_std_and_files(tmp_path):
  jobs = _plan(tmp_path, ('5b', '5c'), (0, 1, 2))
  fake = FakeRuns()
  info = dict(config='configs/synthetic.py', num_train_steps=4, steps_from='test')
  tables = experiments.run_all(
    jobs,
    str(tmp_path),
    steps_info=info,
    train_fn=fake.train,
    eval_fn=fake.evaluate,
    log=lambda s: None,
  )
  for name in ('5b', '5c'):
    for ext in ('md', 'json', 'png'):
      assert os.path.getsize(tmp_path / f'table_{name}.{ext}') > 0
  rows = {r['row']: r for r in json.load(open(tmp_path / 'table_5b.json'))['rows']}
  cc = rows['ActionCLIP clean -> clean']
  want = [100 * (0.2 + 0.02 * s + 0.3) for s in (0, 1, 2)]
  np.testing.assert_allclose(cc['top1'], want)
  np.testing.assert_allclose(cc['top1_mean'], np.mean(want))
  np.testing.assert_allclose(cc['top1_std'], np.std(want, ddof=1))
  np.testing.assert_allclose(rows['ActionCLIP clean -> foggy']['top1_mean'], np.mean(want) - 30)
  assert cc['seeds'] == [0, 1, 2] and cc['paper_top1'] == 86.7
  assert tables['5c']['num_train_steps'] == 4
  md = open(tmp_path / 'table_5b.md').read()
  assert f'{np.mean(want):.1f} ± {np.std(want, ddof=1):.1f}' in md
  orderings = json.load(open(tmp_path / 'table_5b.json'))['orderings']
  assert len(orderings) == len(experiment_tables.ORDERINGS['5b'])
  first = orderings[0]  # clean -> clean vs clean -> foggy: +30 points, equal stds
  assert first['holds'] and first['op'] == '>'
  np.testing.assert_allclose(first['difference'], 30.0)
  np.testing.assert_allclose(first['margin_std'], 30.0 / np.std(want, ddof=1))
  assert 'ActionCLIP clean -> clean > ActionCLIP clean -> foggy: holds (+30.0 points' in md


def test_orderings_margin_in_seed_std_units():
  def row(name, top1):
    return dict(
      row=name,
      top1_mean=float(np.mean(top1)) if top1 else None,
      top1_std=float(np.std(top1, ddof=1)) if len(top1) > 1 else None,
    )

  rows = [
    row('Four', [50.0, 54.0, 58.0]),  # mean 54, std 4
    row('Single (front, replicated to full size)', [60.0, 63.0, 66.0]),
  ]  # 63, std 3
  (o,) = experiment_tables.check_orderings(rows, '5c')
  assert o['holds'] is False
  np.testing.assert_allclose(o['difference'], -9.0)
  np.testing.assert_allclose(o['margin_std'], -9.0 / np.sqrt((16 + 9) / 2))
  rows[1] = row('Single (front, replicated to full size)', [40.0])  # one seed: no std
  (o,) = experiment_tables.check_orderings(rows, '5c')
  assert o['holds'] is True and o['margin_std'] is None
  rows[1] = row('Single (front, replicated to full size)', [])  # not run
  assert experiment_tables.check_orderings(rows, '5c')[0]['holds'] is None
  # '>=' holds on a tie, '>' does not
  ties = [
    row(n, [30.0, 32.0])
    for n in (
      'Baseline (ActionCLIP)',
      'FAS',
      'ME',
      'CSA',
      'FAS + ME + CSA',
      'Baseline, transformer fusion',
    )
  ]
  got = {(o['a'], o['op']): o['holds'] for o in experiment_tables.check_orderings(ties, '5a')}
  assert got[('ME', '>=')] is True and got[('FAS', '>')] is False
  for table, claims in experiment_tables.ORDERINGS.items():  # every claim names rows of its table
    names = {label for label, _, _ in experiment_tables.TABLES[table]['rows']}
    assert all(a in names and b in names for a, _, b in claims)


def test_command_line_parses_the_flags_of_main(tmp_path):
  """`python -m fognet_jax.experiments` takes main's --config / --workdir (an unknown table is
  the first error it can reach without running anything)."""
  import main_testutil  # pylint: disable=g-import-not-at-top

  r = main_testutil.run_module(
    'fognet_jax.experiments',
    '--config=configs/synthetic.py',
    f'--workdir={tmp_path}',
    '--tables=5x',
    timeout=120,
  )
  assert r.returncode != 0
  assert 'Unknown command line flag' not in r.stderr
  assert "--tables: unknown table(s) ['5x']" in r.stderr
