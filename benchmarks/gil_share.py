"""How long the input pipeline holds the GIL per training pair: the ceiling of one process.

  python benchmarks/gil_share.py --py_spy PATH [--worker_type thread,process] [--workers 2]
                                 [--seconds 20] [--rate 250] [--data_dir DIR]

Threads of one process run Python one at a time. Whatever the core count, a process whose
input pipeline holds the GIL for g ms per training pair cannot deliver more than 1000 / g pairs
per second; the training loop's own Python needs the GIL too. This runs the training
iterator (`synthetic_fog_act/bench224`, 8x224^2, batch 8, pixels on the device) under the
sampling profiler py-spy (https://github.com/benfred/py-spy; `pip install py-spy`, not a
dependency of the project; it needs ptrace permission) twice: once sampling every active
thread, once only the threads that hold the GIL (`--gil`). Reported per worker type:
  thread   the worker threads' share of their active time spent holding the GIL, and g;
  process  the main process's GIL time per pair (receiving results, stacking batches); the
           worker processes each have their own GIL.
The two runs are separate processes, so the rates differ a little; each figure uses its own
run's pair count. The ceiling 1000 / g ignores the training loop's share.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def child(kind: str, workers: int, seconds: float, data_dir: str, out: str) -> None:
  """Runs the training iterator for `seconds` after one warm-up batch; writes the pair count."""
  from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
  from fognet_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from fognet_jax import records  # pylint: disable=g-import-not-at-top

  cfg = config_lib.load_config('fogact').data
  cfg.dataset, cfg.data_dir = 'synthetic_fog_act/bench224', data_dir
  cfg.num_frames, cfg.image_size = 8, 224
  records.prepare(cfg)
  it = ip.train_iterator(
    cfg,
    batch_size=8,
    seed=0,
    process_index=0,
    process_count=1,
    pixels_on_device=True,
    worker_type=kind,
    num_workers=workers,
  )
  next(it)
  pairs, t0 = 8, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    pairs += 8
  rate = (pairs - 8) / (time.perf_counter() - t0)
  it.close()
  with open(out, 'w') as f:
    json.dump({'pairs': pairs, 'pairs_per_s': rate}, f)


def _samples(raw_path: str, kind: str) -> int:
  """Samples of the pipeline's own work in py-spy's raw output (one 'stack count' per line)."""
  total = 0
  with open(raw_path) as f:
    for line in f:
      stack, _, n = line.rstrip().rpartition(' ')
      if kind == 'thread':
        mine = '_TrainItem.make' in stack or '_Item.__call__' in stack
      else:  # the main process: the executor's threads and the iterator's own frames
        mine = (
          'concurrent/futures' in stack or 'train_iterator' in stack or 'multiprocessing' in stack
        )
      if mine:
        total += int(n)
  return total


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--py_spy', default='py-spy', help='the py-spy executable')
  parser.add_argument('--worker_type', default='thread,process')
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--seconds', type=float, default=20)
  parser.add_argument('--rate', type=int, default=250, help='py-spy samples per second')
  parser.add_argument(
    '--data_dir', default=os.path.join(tempfile.gettempdir(), 'fognet_bench_data')
  )
  parser.add_argument('--child', nargs=2, metavar=('KIND', 'OUT'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child[0], args.workers, args.seconds, args.data_dir, args.child[1])
    return
  print(f'cpus visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}')
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for kind in args.worker_type.split(','):
      got = {}
      for gil in (False, True):
        raw, out = os.path.join(tmp, f'{kind}{gil}.txt'), os.path.join(tmp, f'{kind}{gil}.json')
        cmd = [args.py_spy, 'record', '-r', str(args.rate), '-f', 'raw', '-o', raw, '--nonblocking']
        cmd += ['--gil'] if gil else []
        cmd += [
          '--',
          sys.executable,
          os.path.abspath(__file__),
          '--child',
          kind,
          out,
          '--workers',
          str(args.workers),
          '--seconds',
          str(args.seconds),
          '--data_dir',
          args.data_dir,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not os.path.exists(out):
          raise SystemExit(f'py-spy run failed ({" ".join(cmd)}):\n{proc.stderr[-2000:]}')
        with open(out) as f:
          got[gil] = (json.load(f), _samples(raw, kind))
      (run_all, active), (run_gil, held) = got[False], got[True]
      ms = 1e3 / args.rate
      gil_ms = held * ms / run_gil['pairs']
      rows.append(
        (
          kind,
          run_all['pairs_per_s'],
          run_gil['pairs_per_s'],
          active * ms / run_all['pairs'],
          gil_ms,
          held / max(active, 1),
          1e3 / gil_ms if gil_ms else float('inf'),
        )
      )
  print(
    f'\nbench224, 8x224^2, batch 8, pixels on the device, {args.workers} workers, '
    f'{args.seconds:.0f} s per run, py-spy at {args.rate} Hz'
  )
  print(
    "| workers | pairs/s (all threads / GIL run) | measured threads' active CPU ms per pair "
    '| GIL ms per pair | GIL share | ceiling of one process, pairs/s |'
  )
  print('|---|---|---|---|---|---|')
  for kind, r1, r2, act, gil_ms, share, cap in rows:
    if kind == 'thread':
      print(
        f'| thread (worker threads) | {r1:.1f} / {r2:.1f} | {act:.1f} | {gil_ms:.2f} '
        f'| {100 * share:.0f} % | {cap:.0f} |'
      )
    else:  # py-spy counts the executor thread's wait in select() as active: no share here
      print(f'| process (main process) | {r1:.1f} / {r2:.1f} | - | {gil_ms:.2f} | - | {cap:.0f} |')


if __name__ == '__main__':
  main()
