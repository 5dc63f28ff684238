"""A real multi-process run, the path every TPU pod run takes, on CPU.

Two processes (`jax.distributed` on localhost, gloo collectives, 2 CPU devices each) run
`fognet_jax.main` on the synthetic config shrunk to a few steps: the first invocation trains 2
steps and saves a checkpoint, the second restores it and trains to step 4, then evaluates. One
process with 4 devices runs the same 4 steps in one go. With a constant learning rate the
schedule does not depend on the run's length, so both must end with the same parameters and
evaluation; each process must have read only its own rows, and metrics, summaries and results
must be written once.

The children run this file (`python tests/test_multiprocess.py --config=... --workdir=...`):
`main.main` with a few library functions wrapped to log, per process, which training samples
and evaluation examples it read, which files it wrote and the final parameters.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import threading
import time

import main_testutil
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRACE_ENV = 'FOGNET_TEST_TRACE_DIR'
BATCH = 8  # main_testutil.TINY's batch: 2 rows per device on 4 devices
TINY = [
  '--config=configs/synthetic.py:scratch',
  *main_testutil.TINY,
  '--config.model.clip_overrides.vision_layers=1',
  '--config.model.clip_overrides.text_layers=1',
  '--config.train.checkpoint_every_steps=2',
  '--config.eval.confusion_matrix=True',
  # A constant learning rate: 2 steps + 2 resumed steps equal 4 steps in one go.
  '--config.train.warmup_epochs=0',
  '--config.train.end_lr_ratio=1.0',
  '--config.perf.async_checkpointing=False',
  # Parameters whose gradient is zero in exact arithmetic (attention key biases) get float
  # noise as gradient, which Adam with a tiny eps turns into full-size updates of either sign;
  # a larger eps leaves them still, so that the two runs can be compared.
  '--config.train.eps=1e-3',
]
TIMEOUT_S = 240
TIMING_KEYS = ('steps_per_sec', 'clip_pairs_per_sec')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _tail(path: str, n: int = 4000) -> str:
  with open(path, errors='replace') as f:
    return f.read()[-n:]


def _launch(
  num_processes: int,
  devices: int,
  workdir: str,
  trace_dir: str,
  args: list[str],
  timeout: float = TIMEOUT_S,
) -> list[str]:
  """Runs `num_processes` children of `main`, each with `devices` CPU devices; returns their
  log paths. Fails with the logs' tails when one exits non-zero; kills all on a timeout."""
  os.makedirs(trace_dir, exist_ok=True)
  port = _free_port()
  procs, logs = [], []
  try:
    for i in range(num_processes):
      env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'))
      }
      env.update(
        PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get('PYTHONPATH', '')]),
        JAX_PLATFORMS='cpu',
        TF_CPP_MIN_LOG_LEVEL='2',
        # No LLVM optimisation: compiling dominates these few steps.
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
        '--xla_backend_optimization_level=0',
        **{TRACE_ENV: trace_dir},
      )
      if num_processes > 1:
        env.update(
          JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
          JAX_NUM_PROCESSES=str(num_processes),
          JAX_PROCESS_ID=str(i),
        )
      log = os.path.join(trace_dir, f'log.{i}.txt')
      logs.append(log)
      with open(log, 'w') as out:
        procs.append(
          subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f'--workdir={workdir}', *TINY, *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
      failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(30)
  codes = [p.returncode for p in procs]
  if any(codes):
    tails = '\n'.join(
      f'--- process {i} (exit {c}) ---\n{_tail(logs[i])}' for i, c in enumerate(codes)
    )
    pytest.fail(
      f'{num_processes}-process run {args} failed or timed out ({timeout:.0f} s): '
      f'exit codes {codes}\n{tails}'
    )
  return logs


def _trace(trace_dir: str, kind: str, process: int) -> list[dict]:
  path = os.path.join(trace_dir, f'{kind}.{process}.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _history(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [
      {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
      for line in f
      if line.strip()
    ]


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def data_args(tmp_path_factory):
  """A tiny synthetic_fog_act, built here once so that the children do not race to build it."""
  from fognet_jax import config_lib
  from fognet_jax import records

  base = tmp_path_factory.mktemp('synthetic')
  args = main_testutil.tiny_data_args(base)
  cfg = config_lib.load_config(os.path.join(ROOT, 'configs', 'synthetic.py'))
  cfg.data.data_dir, cfg.data.manual_dir = str(base / 'tfds'), str(base / 'manual')
  info = records.prepare(cfg.data)
  return args, info.num_examples[cfg.data.eval_split]


def test_two_processes_with_resume_equal_one_process(tmp_path, data_args):
  args, num_test = data_args
  t0 = time.time()
  ref_dir, ref_trace = str(tmp_path / 'one'), str(tmp_path / 'one_trace')
  mp_dir = str(tmp_path / 'two')
  mp_trace = [str(tmp_path / 'two_trace_a'), str(tmp_path / 'two_trace_b')]

  # 1 process x 4 devices, 4 steps in one go; at the same time the 2-process job's first part
  # (2 x 2 devices, 2 steps, checkpoint at the end, no evaluation).
  ref_error = []

  def run_ref():
    try:
      _launch(1, 4, ref_dir, ref_trace, [*args, '--config.train.num_train_steps=4'])
    except BaseException as e:  # pylint: disable=broad-except
      ref_error.append(e)

  ref = threading.Thread(target=run_ref)
  ref.start()
  try:
    _launch(
      2, 2, mp_dir, mp_trace[0], [*args, '--config.train.num_train_steps=2', '--mode=train_only']
    )
  finally:
    ref.join()
  if ref_error:
    raise ref_error[0]
  assert sorted(os.listdir(os.path.join(mp_dir, 'checkpoints'))) == ['2']
  assert not os.path.exists(os.path.join(mp_dir, 'results.json'))
  # The second part restores step 2 and continues to 4, then evaluates.
  logs = _launch(2, 2, mp_dir, mp_trace[1], [*args, '--config.train.num_train_steps=4'])
  assert 'Resuming at step 2' in _tail(logs[0], 10**7), _tail(logs[0])
  print(f'runs took {time.time() - t0:.0f} s')

  # Same parameters in both processes, equal to the 1-process run's.
  ref_params = dict(np.load(os.path.join(ref_trace, 'params.0.npz')))
  for p in (0, 1):
    got = dict(np.load(os.path.join(mp_trace[1], f'params.{p}.npz')))
    assert sorted(got) == sorted(ref_params)
    diff = {k: float(np.max(np.abs(got[k] - v))) for k, v in ref_params.items()}
    worst = max(diff, key=diff.get)
    print(f'process {p}: max |parameter difference| {diff[worst]:.2e} ({worst})')
    for k, v in ref_params.items():  # 4 steps of learning rate 2e-3 move a parameter by ~1e-2
      np.testing.assert_allclose(
        got[k], v, rtol=1e-5, atol=5e-6, err_msg=f'process {p}: {k} differs from the 1-process run'
      )
  moved = max(
    float(np.max(np.abs(ref_params[k] - v)))
    for k, v in np.load(os.path.join(mp_trace[0], 'params_initial.0.npz')).items()
  )
  assert moved > 1e-4, 'training did not change the parameters'

  # Each step's logged metrics once (process 0 writes), equal to the 1-process run's.
  ref_hist, mp_hist = _history(ref_dir), _history(mp_dir)
  assert [r['step'] for r in mp_hist] == [1, 2, 3, 4], mp_hist
  for a, b in zip(mp_hist, ref_hist):
    for k in ('loss', 'loss_f', 'loss_c', 'learning_rate', 'grad_norm'):
      assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a['step'], k, a[k], b[k])
  assert (
    len(glob.glob(os.path.join(mp_dir, 'tensorboard', 'events.out.tfevents.*'))) == 2
  )  # one per part

  # Each process read its own half of every global batch: disjoint, together the whole batch.
  for trace, steps in ((mp_trace[0], range(0, 2)), (mp_trace[1], range(2, 4))):
    rows = {p: {r['step']: r for r in _trace(trace, 'train_rows', p)} for p in (0, 1)}
    for p in (0, 1):
      assert min(rows[p]) == steps[0], f'process {p} started reading at {min(rows[p])}'
      assert all(r['process'] == p and r['process_count'] == 2 for r in rows[p].values())
    for s in steps:
      a, b = rows[0][s]['g'], rows[1][s]['g']
      assert len(a) == len(b) == BATCH // 2
      assert not set(a) & set(b), f'step {s}: both processes read samples {set(a) & set(b)}'
      assert sorted(a + b) == list(range(s * BATCH, (s + 1) * BATCH))
  ref_rows = {r['step']: r for r in _trace(ref_trace, 'train_rows', 0)}
  for s in range(4):
    trace = mp_trace[s // 2]
    mp_pos = sorted(
      p for q in (0, 1) for r in _trace(trace, 'train_rows', q) if r['step'] == s for p in r['pos']
    )
    assert mp_pos == sorted(ref_rows[s]['pos']), f'step {s}: other examples than 1 process'

  # Evaluation: contiguous halves of the test split, every video counted once.
  ranges = [_trace(mp_trace[1], 'eval_rows', p) for p in (0, 1)]
  assert [r[0]['range'] for r in ranges] == [
    [0, (num_test + 1) // 2],
    [(num_test + 1) // 2, num_test],
  ], ranges
  ref_res, mp_res = _results(ref_dir), _results(mp_dir)
  assert mp_res['num_videos'] == ref_res['num_videos'] == num_test
  assert mp_res['step'] == ref_res['step'] == 4
  assert sum(sum(row) for row in mp_res['confusion_matrix']) == num_test
  for k in ('top1', 'top5', 'mean_class_accuracy'):
    assert mp_res[k] == pytest.approx(ref_res[k], abs=1.5 / num_test), k

  # results.json and confusion_matrix.png written by process 0 only, once.
  for trace in mp_trace:
    assert not _trace(trace, 'writes', 1), _trace(trace, 'writes', 1)
  assert _trace(mp_trace[0], 'writes', 0) == []
  assert sorted(w['file'] for w in _trace(mp_trace[1], 'writes', 0)) == [
    'confusion_matrix.png',
    'results.json',
  ]


# ------------------------------------------------------------------------------ child process


def _instrument(trace_dir: str) -> None:
  """Wraps library functions to log, per process, what this process read and wrote."""
  import jax

  from fognet_jax import evaluate
  from fognet_jax import input_pipeline
  from fognet_jax import optim
  from fognet_jax import train

  lock = threading.Lock()

  def record(kind, **fields):
    with lock, open(os.path.join(trace_dir, f'{kind}.{jax.process_index()}.jsonl'), 'a') as f:
      f.write(json.dumps(fields) + '\n')

  def flat(params):
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    return {optim.path_str(p): np.asarray(x) for p, x in leaves}

  sample_ids = input_pipeline.train_sample_ids

  def train_sample_ids(num_examples, **kw):
    g, pos = sample_ids(num_examples, **kw)
    record(
      'train_rows',
      step=kw['step'],
      process=kw['process_index'],
      process_count=kw['process_count'],
      g=g.tolist(),
      pos=pos.tolist(),
    )
    return g, pos

  process_range = input_pipeline.eval_process_range

  def eval_process_range(num_examples, process_index, process_count):
    r = process_range(num_examples, process_index, process_count)
    record('eval_rows', process=process_index, range=list(r))
    return r

  write_results, plot_confusion = evaluate.write_results, evaluate.plot_confusion

  def write_results_logged(results, directory):
    record('writes', file=evaluate.RESULTS_FILE)
    return write_results(results, directory)

  def plot_confusion_logged(cm, class_names, path, title=''):
    record('writes', file=os.path.basename(path))
    return plot_confusion(cm, class_names, path, title)

  train_fn = train.train

  def train_logged(config, workdir, *, model, **kw):
    np.savez(
      os.path.join(trace_dir, f'params_initial.{jax.process_index()}.npz'),
      **flat(train.split_model(model)[1]),
    )
    graphdef, state, last = train_fn(config, workdir, model=model, **kw)
    np.savez(os.path.join(trace_dir, f'params.{jax.process_index()}.npz'), **flat(state.params))
    return graphdef, state, last

  input_pipeline.train_sample_ids = train_sample_ids
  input_pipeline.eval_process_range = eval_process_range
  evaluate.write_results = write_results_logged
  evaluate.plot_confusion = plot_confusion_logged
  train.train = train_logged


if __name__ == '__main__':
  from absl import app

  from fognet_jax import main as main_lib

  _instrument(os.environ[TRACE_ENV])
  main_lib.define_flags()
  app.run(main_lib.main)
