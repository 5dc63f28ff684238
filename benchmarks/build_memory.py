"""Peak memory of building one FogAct example from a 12 s 1080p clean/foggy pair.

  python benchmarks/build_memory.py [--workdir /tmp/fognet_build_memory] [--seconds 12]

Writes a 1920×1080, 25 fps pair with PyAV (H.264; the foggy video is the clean one hazed),
then runs each mode in a fresh subprocess: after the imports the process resets its peak
RSS (/proc/self/clear_refs), runs the mode and reports the peak RSS (VmHWM) over it, the
increase over the RSS before it, and, for the Python/NumPy side, the tracemalloc peak:

  baseline      imports and warm-up only (TensorFlow, TFDS, the builders, one tiny
                example serialised): every mode starts from this state
  naive_decode  decode the clean video at full resolution into memory, then resize
                (what a reader that holds the whole clip does; clean stream only)
  stream_read   video_io.read_video of both streams with fps=8, short_side=256
                (subsampling and resizing while decoding)
  example       one example as the builder makes it (decode both streams, JPEG-encode,
                serialise with the TFDS feature spec), fogact/default (256 px, 8 fps)
  example_full  the same at the source frame rate (fogact/full_fps: 256 px, 25 fps)
  example_fogged  one fogged-public example (kinetics100_fog/default) from the clean
                video: decode at 256 px / 8 fps, ASM fog of the whole reduced clip, JPEG
  build         common.prepare (tfds download_and_prepare + the ArrayRecord copy) of a
                manual dir holding just this pair, fogact/default

Ratios are to `naive_decode` in the same run. Memory is measured, never timed in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = (
  'baseline',
  'naive_decode',
  'stream_read',
  'example',
  'example_full',
  'example_fogged',
  'build',
)


def make_pair(workdir: str, seconds: float, fps: int = 25) -> tuple[str, str]:
  """Writes clean.mp4 / foggy.mp4 (1920×1080) under workdir/manual/ unless present."""
  import numpy as np

  from tfds_fogact import video_io

  manual = os.path.join(workdir, 'manual')
  clean = os.path.join(manual, 'clean.mp4')
  foggy = os.path.join(manual, 'foggy.mp4')
  n = int(round(seconds * fps))
  if all(os.path.isfile(p) for p in (clean, foggy)):
    if video_io.probe(clean).num_frames == n:
      return clean, foggy
  os.makedirs(manual, exist_ok=True)
  h, w = 1080, 1920
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], -1)

  def frames(foggy_stream: bool):
    for t in range(n):
      f = base.copy()
      x0 = int(100 + 1500 * t / n)
      f[400:700, x0 : x0 + 200] = (230, 60, 40)  # A moving "person".
      f[:, :, 0] += 20 * np.sin(xx / 50 + t / 5)
      if foggy_stream:
        f = f * 0.4 + 200 * 0.6
      yield np.clip(f, 0, 255).astype(np.uint8)

  video_io.write_video(clean, frames(False), fps, codec='libx264', quality=23)
  video_io.write_video(foggy, frames(True), fps, codec='libx264', quality=23)
  with open(os.path.join(manual, 'classes.txt'), 'w') as f:
    f.write('walk\n')
  with open(os.path.join(manual, 'annotations.csv'), 'w') as f:
    f.write(
      'clip_id,label,clean,foggy,scene,perspective,fog,split\n'
      'pair0,walk,clean.mp4,foggy.mp4,bench,front,dense,train\n'
    )
  return clean, foggy


def _status_mib(field: str) -> float:
  """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) / 1024
  raise KeyError(field)


def _reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0), so imports do not mask the peak."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _child(mode: str, workdir: str) -> dict:
  """Runs one mode in this (fresh) process; returns its measurements."""
  import resource
  import tracemalloc

  import numpy as np
  import tensorflow_datasets as tfds

  import tfds_fogact  # noqa: F401
  from tfds_fogact import common
  from tfds_fogact import video_io
  from tfds_fogact.fogact import annotations
  from tfds_fogact.fogact import fogact_dataset_builder
  from tfds_fogact.fogact import video_pairs

  manual = os.path.join(workdir, 'manual')
  clean = os.path.join(manual, 'clean.mp4')
  foggy = os.path.join(manual, 'foggy.mp4')
  configs = {c.name: c for c in fogact_dataset_builder.Builder.BUILDER_CONFIGS}
  # Fixed costs first (TensorFlow import, the TFDS feature encoders on a tiny example), so
  # the peak below is what the example itself adds.
  import tensorflow as tf

  tf.constant(0)
  warm = fogact_dataset_builder.features_without_label_names((None, None))
  warm['label'].names = ['walk']
  tiny = common.encode_jpeg_frames(np.zeros((1, 8, 8, 3), np.uint8))
  warm.serialize_example(
    {
      'clean': tiny,
      'foggy': tiny,
      'label': 0,
      'clip_id': 'w',
      'scene': '',
      'perspective': -1,
      'fog': -1,
      'num_people': -1,
      'num_frames': 1,
    }
  )
  out = {'mode': mode}
  out['rss_before_mib'] = _status_mib('VmRSS')
  if not _reset_peak():
    raise SystemExit('cannot reset the peak RSS (/proc/self/clear_refs); Linux only')
  tracemalloc.start()
  t0 = time.perf_counter()
  if mode == 'naive_decode':
    frames = list(video_io.iter_frames(clean))  # Full resolution, every frame.
    out['held_frames'] = len(frames)
    out['held_mib'] = sum(f.nbytes for f in frames) / 2**20
    small = np.stack([common.resize_frame(f, (256, 455)) for f in frames[::3]])
    out['frames'] = int(small.shape[0])
    del frames
  elif mode == 'stream_read':
    a, _ = video_io.read_video(clean, fps=8, short_side=256)
    b, _ = video_io.read_video(foggy, fps=8, short_side=256)
    out['frames'] = int(a.shape[0])
    out['held_mib'] = (a.nbytes + b.nbytes) / 2**20
  elif mode in ('example', 'example_full'):
    config = configs['default' if mode == 'example' else 'full_fps']
    _, clips = annotations.load_manual_dir(manual)
    features = fogact_dataset_builder.features_without_label_names(config.frame_shape)
    features['label'].names = ['walk']
    for _, ex in video_pairs.generate_examples(
      clips, config, skip_bad=False, report=video_pairs.BuildReport()
    ):
      serialized = features.serialize_example(ex)
      out['frames'] = int(ex['num_frames'])
      out['example_mib'] = len(serialized) / 2**20
  elif mode == 'example_fogged':
    from tfds_fogact.fogged_public import fogged_public

    config = fogged_public.Kinetics100Fog.BUILDER_CONFIGS[0]  # default: 256 px, 8 fps
    clip = annotations.Clip(clip_id='walk/pair0', label='walk', clean=clean, foggy=None)
    features = fogact_dataset_builder.features_without_label_names(config.frame_shape)
    features['label'].names = ['walk']
    for _, ex in video_pairs.generate_examples(
      [clip],
      config,
      skip_bad=False,
      report=video_pairs.BuildReport(),
      make_foggy=fogged_public.make_foggy(config),
    ):
      serialized = features.serialize_example(ex)
      out['frames'] = int(ex['num_frames'])
      out['example_mib'] = len(serialized) / 2**20
  elif mode == 'build':
    data_dir = os.path.join(workdir, 'data')
    if os.path.isdir(data_dir):
      import shutil

      shutil.rmtree(data_dir)
    builder = fogact_dataset_builder.Builder(data_dir=data_dir, config='default')
    common.prepare(builder, tfds.download.DownloadConfig(manual_dir=manual))
    out['frames'] = '1 example'
  out['seconds'] = time.perf_counter() - t0
  out['tracemalloc_peak_mib'] = tracemalloc.get_traced_memory()[1] / 2**20
  out['peak_rss_mib'] = _status_mib('VmHWM')
  out['process_peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='/tmp/fognet_build_memory')
  parser.add_argument('--seconds', type=float, default=12.0)
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print('RESULT ' + json.dumps(_child(args.child, args.workdir)))
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  t = time.perf_counter()
  clean, _ = make_pair(args.workdir, args.seconds)
  from tfds_fogact import video_io

  info = video_io.probe(clean)
  print(
    f'pair: {info.width}×{info.height}, {info.fps:g} fps, {info.num_frames} frames '
    f'({info.duration_s:.1f} s), {os.path.getsize(clean) / 2**20:.1f} MiB per video '
    f'(made/checked in {time.perf_counter() - t:.0f} s)'
  )
  full_clip = info.num_frames * info.width * info.height * 3 / 2**20
  print(
    f'one full-resolution frame: {info.width * info.height * 3 / 2**20:.1f} MiB; '
    f'whole clip at full resolution: {full_clip:.0f} MiB per stream'
  )
  results = {}
  for mode in args.modes.split(','):
    proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--child', mode, '--workdir', args.workdir],
      capture_output=True,
      text=True,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    )
    line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not line:
      sys.stderr.write(proc.stderr[-3000:])
      raise SystemExit(f'mode {mode} failed (exit {proc.returncode})')
    results[mode] = json.loads(line[0][len('RESULT ') :])
  naive = results.get('naive_decode')
  naive_extra = naive['peak_rss_mib'] - naive['rss_before_mib'] if naive else None
  print()
  print(
    '| mode | frames kept | RSS after imports MiB | peak RSS MiB | peak - before MiB '
    '| tracemalloc peak MiB | (peak - before) / naive | s |'
  )
  print('|---|---|---|---|---|---|---|---|')
  for mode, r in results.items():
    extra = r['peak_rss_mib'] - r['rss_before_mib']
    ratio = f'{extra / naive_extra:.3f}' if naive_extra and mode != 'baseline' else ''
    print(
      f'| {mode} | {r.get("frames", "")} | {r["rss_before_mib"]:.0f} | '
      f'{r["peak_rss_mib"]:.0f} | {extra:.0f} | {r["tracemalloc_peak_mib"]:.0f} | '
      f'{ratio} | {r["seconds"]:.1f} |'
    )
  for mode, r in results.items():
    if 'example_mib' in r:
      print(f'{mode}: serialised example {r["example_mib"]:.1f} MiB')


if __name__ == '__main__':
  main()
