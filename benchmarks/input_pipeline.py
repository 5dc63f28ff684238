"""Input-pipeline throughput and generated-benchmark build cost.

  python benchmarks/input_pipeline.py [--data_dir DIR] [--steps 12] [--warmup 5] [--batch 8]
                                      [--workers 1,2] [--pixels host,device]
                                      [--worker_type thread,process]
                                      [--skip_default_build]

1. Builds `synthetic_fog_act/default` in a fresh directory (TFRecord + ArrayRecord
   copy) and reports wall time, CPU time and size on disk.
2. Builds (or reuses) `synthetic_fog_act/bench224` (224x224, 16 frames) and measures
   training clip pairs/s at 8x224x224 (paired decode + augmentation + normalisation)
   and foggy-only evaluation clips/s (1x1 view), for each worker count and kind
   (`config.perf.worker_type`: Grain's reading threads, or its spawned worker processes
   returning batches in shared memory), plus the rate per busy core
   (CPU time of the process and its workers / wall time), the main process's own CPU time
   per clip (with process workers: receiving and stacking the results; the cap of what one
   main process can take in) and the workers' resident memory; for each place the per-pixel
   float work runs (`config.perf.pixels_on_device`): 'host' (jitter and normalisation in
   NumPy, float32 batches) or 'device' (uint8 batches; the same work in the jitted step,
   timed separately on jax's default backend, with the bytes each clip sends).
Training is timed after `--warmup` batches, when process workers have started; evaluation
within its one pass over the test split (a new pass starts new workers), so its
process-worker figures include that start.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

import tfds_fogact  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
from fognet_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
from fognet_jax import pixels  # pylint: disable=g-import-not-at-top
from fognet_jax import records  # pylint: disable=g-import-not-at-top
from tfds_fogact import common  # pylint: disable=g-import-not-at-top


def _children():
  """[(CPU seconds, resident MiB)] of this process's live child processes (Linux /proc)."""
  out, me, tick = [], os.getpid(), os.sysconf('SC_CLK_TCK')
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rpartition(')')[2].split()
      if int(fields[1]) != me:
        continue
      with open(f'/proc/{pid}/status') as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')) / 1024
      out.append(((int(fields[11]) + int(fields[12])) / tick, rss))
    except (OSError, StopIteration, ValueError, IndexError):
      continue  # gone meanwhile
  return out


def _cpu(parent_only=False):
  """CPU seconds of this process, plus (unless parent_only) of its children, live or reaped."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  own = r.ru_utime + r.ru_stime
  if parent_only:
    return own
  c = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own + c.ru_utime + c.ru_stime + sum(cpu for cpu, _ in _children())


def _dir_size(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def build(name, data_dir):
  builder = tfds.builder(name, data_dir=data_dir)
  wall, cpu = time.perf_counter(), _cpu()
  common.prepare(builder)
  wall, cpu = time.perf_counter() - wall, _cpu() - cpu
  files = os.listdir(builder.data_dir)
  tfrecord = sum(
    os.path.getsize(os.path.join(builder.data_dir, f)) for f in files if '.tfrecord-' in f
  )
  return builder, wall, cpu, tfrecord, _dir_size(os.fspath(builder.data_dir))


def measure(it, steps, per_batch, warmup=1):
  """(clips/s, busy cores, clips/s per busy core, parent's CPU ms per clip, workers' MiB).

  `warmup` batches are taken first. The first waits for the workers to start (process
  workers: spawned, importing the package): the rates of the first few batches are below
  the steady state's.
  """
  for _ in range(warmup):
    next(it)
  wall, cpu, parent = time.perf_counter(), _cpu(), _cpu(parent_only=True)
  for _ in range(steps):
    next(it)
  wall, cpu = time.perf_counter() - wall, _cpu() - cpu
  parent = _cpu(parent_only=True) - parent
  rss = sum(r for _, r in _children())
  rate = steps * per_batch / wall
  return (rate, cpu / wall, rate / max(cpu / wall, 1e-9), 1e3 * parent / (steps * per_batch), rss)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    '--data_dir', default=os.path.join(tempfile.gettempdir(), 'fognet_bench_data')
  )
  parser.add_argument('--steps', type=int, default=12, help='training batches timed')
  parser.add_argument(
    '--warmup',
    type=int,
    default=5,
    help='training batches taken before timing (evaluation: 1, within its '
    'one pass over the test split)',
  )
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--workers', default='1,2')
  parser.add_argument(
    '--pixels',
    default='host,device',
    help='where jitter and normalisation run: host, device or both',
  )
  parser.add_argument(
    '--worker_type',
    default='thread',
    help='config.perf.worker_type: thread, process or both (thread,process)',
  )
  parser.add_argument('--skip_default_build', action='store_true')
  args = parser.parse_args()
  print(f'cpus visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}')

  if not args.skip_default_build:
    fresh = tempfile.mkdtemp(prefix='fognet_default_build_')
    try:
      b, wall, cpu, tfr, total = build('synthetic_fog_act/default', fresh)
      print(
        '\n| build | clips (train/test) | wall s | CPU s | TFRecord MiB | on disk MiB (TFRecord + ArrayRecord) |'
      )
      print('|---|---|---|---|---|---|')
      print(
        f'| synthetic_fog_act/default | {b.info.splits["train"].num_examples}/'
        f'{b.info.splits["test"].num_examples} | {wall:.1f} | {cpu:.1f} | {tfr / 2**20:.1f} | '
        f'{total / 2**20:.1f} |'
      )
    finally:
      shutil.rmtree(fresh, ignore_errors=True)

  builder = tfds.builder('synthetic_fog_act/bench224', data_dir=args.data_dir)
  if not (builder.is_prepared() and common.has_random_access(builder)):
    _, wall, cpu, _, total = build('synthetic_fog_act/bench224', args.data_dir)
    print(
      f'\nbuilt synthetic_fog_act/bench224: {wall:.1f} s wall, {cpu:.1f} s CPU, {total / 2**20:.1f} MiB'
    )

  cfg = config_lib.load_config('fogact').data
  cfg.dataset = 'synthetic_fog_act/bench224'
  cfg.data_dir = args.data_dir
  cfg.num_frames = 8
  cfg.image_size = 224
  records.prepare(cfg)
  rows, sizes = [], {}
  eval_steps = min(args.steps, records.prepare(cfg).num_examples['test'] // args.batch - 1)
  if eval_steps < 1:
    raise SystemExit(f'--batch {args.batch}: the test split holds fewer than two batches')
  places = [p.strip() for p in args.pixels.split(',')]
  kinds = [k.strip() for k in args.worker_type.split(',')]
  for kind in kinds:
    if kind not in ip.WORKER_TYPES:
      raise SystemExit(f'--worker_type: unknown {kind!r} ({", ".join(ip.WORKER_TYPES)})')
  for place in places:
    if place not in ('host', 'device'):
      raise SystemExit(f'--pixels: unknown place {place!r} (host, device)')
  for workers in [int(w) for w in args.workers.split(',')]:
    for kind in kinds:
      for place in places:
        on_device = place == 'device'
        it = ip.train_iterator(
          cfg,
          batch_size=args.batch,
          seed=0,
          process_index=0,
          process_count=1,
          pixels_on_device=on_device,
          worker_type=kind,
          num_workers=workers,
        )
        rows.append(
          ('train pairs (clean+foggy, augmented)', place, kind, workers)
          + measure(it, args.steps, args.batch, warmup=max(1, args.warmup))
        )
        batch = next(it)
        it.close()
        sizes[('train', place)] = sum(v.nbytes for v in batch.values()) / args.batch
        # within one pass over the test split: a new pass would start a new worker pool
        it = ip.eval_iterator(
          cfg,
          split='test',
          batch_size=args.batch,
          process_index=0,
          process_count=1,
          pixels_on_device=on_device,
          worker_type=kind,
          num_workers=workers,
        )
        rows.append(
          ('eval clips (foggy only, 1x1 view)', place, kind, workers)
          + measure(it, eval_steps, args.batch)
        )
        it.close()
        if place == 'device':
          device_ms = _device_conversion_ms(batch)
  base = rows[0][4]
  print(
    f'\n8x224x224 clips, batch {args.batch}, {args.steps} training batches after '
    f'{max(1, args.warmup)} warm-up batches / {eval_steps} evaluation batches after one'
  )
  print(
    '| path | pixels | workers | clips/s | busy cores | clips/s per core | main process CPU ms '
    "per clip | workers' resident MiB | ratio to first row |"
  )
  print('|---|---|---|---|---|---|---|---|---|')
  for name, place, kind, w, rate, cores, per_core, parent_ms, rss in rows:
    print(
      f'| {name} | {place} | {w} {kind}{"es" if kind == "process" and w > 1 else "s" if w > 1 else ""} | {rate:.1f} | {cores:.2f} | '
      f'{per_core:.1f} | {parent_ms:.1f} | {rss:.0f} | {rate / base:.2f} |'
    )
  for place in places:
    print(
      f'training batch bytes per pair, pixels on {place}: {sizes[("train", place)] / 2**20:.2f} MiB'
    )
  if 'device' in places:
    print(
      f'device-side jitter + normalisation of one training batch ({jax.default_backend()}): '
      f'{device_ms:.1f} ms, {device_ms / args.batch:.2f} ms per pair'
    )


def _device_conversion_ms(batch, repeats=5):
  """Median ms of `pixels.train_inputs` on the batch, jitted, on jax's default backend."""
  fn = jax.jit(pixels.train_inputs)
  batch = jax.device_put({k: batch[k] for k in ('clean', 'foggy', 'color')})
  jax.block_until_ready(fn(batch))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(batch))
    times.append(1e3 * (time.perf_counter() - t))
  return float(np.median(times))


if __name__ == '__main__':
  main()
