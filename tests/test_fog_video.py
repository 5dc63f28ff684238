"""`python -m fognet_jax.fog_video`: fog a video file with the builders' ASM, streamed in chunks."""

import logging
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fognet_jax import fog_video as fog_cli
from tfds_fogact import fog as fog_lib
from tfds_fogact import video_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, H, W = 37, 48, 64  # 37 frames: two full chunks of 16 and a partial one


def _clip():
  """A smooth moving scene: gradients and a bright square (H.264 keeps it well)."""
  y, x = np.mgrid[0:H, 0:W].astype(np.float32)
  frames = []
  for t in range(T):
    f = np.stack([60 + 120 * x / W, 40 + 150 * y / H, 90 + 60 * np.sin((x + 2 * t) / 9)], -1)
    f[10:26, 5 + t : 21 + t] = 230
    frames.append(np.clip(f, 0, 255).astype(np.uint8))
  return np.stack(frames)


@pytest.fixture(scope='module')
def clean_video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('fog') / 'clean.mp4')
  video_io.write_video(path, _clip(), fps=12.5, quality=0)
  return path


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
    [sys.executable, '-m', 'fognet_jax.fog_video', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize('heterogeneous', [True, False])
def test_fog_in_chunks_equals_fog_of_the_whole_clip(heterogeneous):
  clip = _clip()
  whole = fog_lib.apply_fog(clip, intensity='dense', seed=3, heterogeneous=heterogeneous)
  chunks = [
    fog_lib.apply_fog(
      clip[s : s + 16], intensity='dense', seed=3, start_frame=s, heterogeneous=heterogeneous
    )
    for s in range(0, T, 16)
  ]
  np.testing.assert_array_equal(np.concatenate(chunks), whole)
  # The start index matters: the fog field drifts over time.
  shifted = fog_lib.apply_fog(clip[16:32], intensity='dense', seed=3, heterogeneous=heterogeneous)
  assert heterogeneous == (not np.array_equal(shifted, whole[16:32]))


def test_cli_keeps_fps_size_and_frames_and_matches_the_builders_fog(clean_video, tmp_path):
  out = str(tmp_path / 'foggy.mp4')
  r = _run(clean_video, out, '--density=dense', '--seed=5')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'{out}: {T} frames' in r.stderr and 'frame/s' in r.stderr  # progress output
  src, dst = video_io.probe(clean_video), video_io.probe(out)
  assert (dst.width, dst.height, dst.fps) == (src.width, src.height, src.fps)
  clean, _ = video_io.read_video(clean_video)
  foggy, _ = video_io.read_video(out)
  assert foggy.shape == clean.shape == (T, H, W, 3)
  want = fog_lib.apply_fog(clean, intensity='dense', seed=5)
  err = np.abs(foggy.astype(np.float32) - want).mean()
  assert err < 3.0, err  # the H.264 round trip only
  assert np.abs(foggy.astype(np.float32) - clean).mean() > 20 * err  # and it is fog


def test_homogeneous_depth_and_numeric_density_follow_the_asm(clean_video, tmp_path):
  out = str(tmp_path / 'homog.avi')
  r = _run(clean_video, out, '--density=1.5', '--airlight=0.9', '--depth=homogeneous')
  assert r.returncode == 0, r.stderr[-3000:]
  clean, _ = video_io.read_video(clean_video)
  foggy, _ = video_io.read_video(out)
  t = np.exp(-1.5)  # one transmission for every pixel: I = J t + A (1 - t)
  want = clean.astype(np.float64) * t + 255 * 0.9 * (1 - t)
  assert np.abs(foggy - want).mean() < 3.0


def test_depth_map_file(clean_video, tmp_path):
  depth = np.tile(np.linspace(0.0, 1.0, W, dtype=np.float32), (H, 1))
  np.save(tmp_path / 'depth.npy', depth)
  out = str(tmp_path / 'depth.mp4')
  r = _run(clean_video, out, '--density=dense', f'--depth={tmp_path / "depth.npy"}')
  assert r.returncode == 0, r.stderr[-3000:]
  foggy, _ = video_io.read_video(out)
  clean, _ = video_io.read_video(clean_video)
  change = np.abs(foggy.astype(np.float32) - clean).mean(axis=(0, 1, 3))
  assert change[:8].mean() < change[-8:].mean()  # far (d = 1) fogs more than near (d = 0)


@pytest.mark.parametrize(
  'args,match',
  [
    (['{missing}', '{out}'], 'missing.mp4: no such file'),
    (['{text}', '{out}'], 'notes.txt'),
    (['{clean}', '{out}', '--density=thick'], '--density must be one of'),
    (['{clean}', '{out}', '--airlight=2'], '--airlight must be in'),
    (['{clean}', '{out}', '--depth={badnpy}'], 'has shape (3, 3)'),
    (['{clean}', '{out}', '--depth=/no/depth.npy'], '/no/depth.npy does not exist'),
  ],
)
def test_bad_input_is_named(clean_video, tmp_path, capsys, args, match):
  (tmp_path / 'notes.txt').write_text('not a video')
  np.save(tmp_path / 'bad.npy', np.zeros((3, 3), np.float32))
  names = dict(
    missing=str(tmp_path / 'missing.mp4'),
    out=str(tmp_path / 'o.mp4'),
    text=str(tmp_path / 'notes.txt'),
    clean=clean_video,
    badnpy=str(tmp_path / 'bad.npy'),
  )
  code = fog_cli.main([a.format(**names) for a in args])
  assert code == 1
  assert match in capsys.readouterr().err
  assert not os.path.exists(names['out'])  # nothing half-written


def test_unknown_output_extension_names_the_path_and_the_formats(clean_video, tmp_path, capsys):
  out = str(tmp_path / 'foggy.xyz')
  assert fog_cli.main([clean_video, out]) == 1
  assert capsys.readouterr().err.splitlines() == [
    f'error: {out}: unsupported output format .xyz; supported: .mp4, .mkv, .mov (H.264), '
    '.avi (MPEG-4)'
  ]
  assert os.listdir(tmp_path) == []


def test_library_logs_and_warnings_only_with_verbose(clean_video, tmp_path, monkeypatch, caplog):
  probe = video_io.probe

  def noisy_probe(path):  # a library that logs and warns while the video is processed
    logging.getLogger('some_library').warning('library noise')
    warnings.warn('library warning')
    return probe(path)

  monkeypatch.setattr(video_io, 'probe', noisy_probe)
  for name, verbose in (('quiet.mp4', []), ('verbose.mp4', ['--verbose'])):
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
      warnings.simplefilter('always')
      assert fog_cli.main([clean_video, str(tmp_path / name), *verbose]) == 0
    assert ('library noise' in caplog.text) == bool(verbose)
    assert bool(caught) == bool(verbose)
  assert logging.root.manager.disable == logging.NOTSET  # put back


@pytest.fixture(scope='module')
def long_video(tmp_path_factory):
  """300 frames of 320x240: about 5 s of fogging on 2 cores."""
  h, w = 240, 320
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)

  def frames():
    for t in range(300):
      f = np.stack([60 + 120 * x / w, 40 + 150 * y / h, 90 + 60 * np.sin((x + 3 * t) / 9)], -1)
      f[40:90, t % 200 : t % 200 + 50] = 230
      yield np.clip(f, 0, 255).astype(np.uint8)

  path = str(tmp_path_factory.mktemp('long') / 'long.mp4')
  video_io.write_video(path, frames(), fps=25, quality=23)
  return path


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_output_and_prints_one_line(long_video, tmp_path, sig):
  out = tmp_path / 'out' / 'foggy.mp4'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen(
    [sys.executable, '-m', 'fognet_jax.fog_video', long_video, str(out)],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    first = proc.stderr.readline()  # the first progress line: the output is being written
    assert first.startswith('['), first
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 128 + sig, err
  messages = [line for line in err.splitlines() if not line.startswith('[')]
  assert messages == [f'interrupted: {out} was not written'], err
  assert os.listdir(out.parent) == []  # neither the output nor a temporary file
