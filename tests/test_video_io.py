"""Tests for tfds_fogact.video_io: round trips, frame-rate subsampling, resizing, bad files."""

import dataclasses
import logging
import os

import numpy as np
import pytest

from tfds_fogact import video_io

NUM_FRAMES = 50
FPS = 25


def _indexed_clip(num_frames=NUM_FRAMES, height=24, width=32):
  """Frames that show their index as 6 bits: a 2×3 grid of black (0) / white (1) blocks."""
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    for bit in range(6):
      if (t >> bit) & 1:
        r, c = divmod(bit, 3)
        frames[
          t, r * height // 2 : (r + 1) * height // 2, c * width // 3 : (c + 1) * width // 3
        ] = 255
  return frames


def _decoded_indices(frames):
  """Reads the 6-bit index back from the centre of each block (any frame size)."""
  _, height, width, _ = frames.shape
  index = np.zeros(len(frames), int)
  for bit in range(6):
    r, c = divmod(bit, 3)
    y, x = int((r + 0.5) * height / 2), int((c + 0.5) * width / 3)
    index += (frames[:, y, x].mean(axis=-1) > 128).astype(int) << bit
  return index


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  """One short clip per container (and the two codecs in mp4)."""
  root = tmp_path_factory.mktemp('videos')
  frames = _indexed_clip()
  paths = {}
  for ext, codec in [
    ('mp4', 'libx264'),
    ('avi', 'mpeg4'),
    ('mov', 'libx264'),
    ('mkv', 'libx264'),
    ('m4v.mp4', 'mpeg4'),
  ]:
    path = root / f'clip.{ext}'
    video_io.write_video(path, frames, FPS, codec=codec, quality=2)
    paths[ext] = path
  return frames, paths


@pytest.mark.parametrize('ext', ['mp4', 'avi', 'mov', 'mkv', 'm4v.mp4'])
def test_round_trip_every_container(clips, ext):
  frames, paths = clips
  decoded, fps = video_io.read_video(paths[ext])
  assert decoded.shape == frames.shape and decoded.dtype == np.uint8
  assert fps == pytest.approx(FPS)
  np.testing.assert_array_equal(_decoded_indices(decoded), np.arange(NUM_FRAMES))
  assert np.abs(decoded.astype(int) - frames).mean() < 8
  info = video_io.probe(paths[ext])
  assert (info.height, info.width, info.num_frames) == (24, 32, NUM_FRAMES)


@pytest.mark.parametrize('target_fps', [8, 10, 12.5, 24])
def test_fps_subsampling_keeps_floor_k_step_frames(clips, target_fps):
  _, paths = clips
  decoded, fps = video_io.read_video(paths['mp4'], fps=target_fps)
  # Independent rule: output frame k is source frame floor(k * FPS / fps).
  expected = [int(np.floor(k * FPS / target_fps + 1e-9)) for k in range(NUM_FRAMES)]
  expected = [i for i in expected if i < NUM_FRAMES]
  assert fps == target_fps
  np.testing.assert_array_equal(_decoded_indices(decoded), expected)


def test_fps_above_source_keeps_every_frame(clips):
  decoded, fps = video_io.read_video(clips[1]['mp4'], fps=60)
  assert len(decoded) == NUM_FRAMES and fps == FPS


def test_resize_while_decoding(clips):
  _, paths = clips
  small, _ = video_io.read_video(paths['avi'], short_side=12)
  assert small.shape == (NUM_FRAMES, 12, 16, 3)
  fixed, _ = video_io.read_video(paths['avi'], size=(10, 20), fps=5, max_frames=4)
  assert fixed.shape == (4, 10, 20, 3)
  np.testing.assert_array_equal(_decoded_indices(fixed), [0, 5, 10, 15])
  up, _ = video_io.read_video(paths['avi'], short_side=48, max_frames=2)
  assert up.shape == (2, 48, 64, 3)


@pytest.mark.parametrize('declared', [0, 3, 10_000])
def test_read_video_with_wrong_declared_count(clips, monkeypatch, declared):
  """The output array is sized from the container's count; a wrong count changes nothing."""
  real_probe = video_io.probe
  monkeypatch.setattr(
    video_io, 'probe', lambda p: dataclasses.replace(real_probe(p), num_frames=declared)
  )
  decoded, _ = video_io.read_video(clips[1]['mp4'], fps=10)
  assert len(decoded) == 20 and decoded.flags.c_contiguous
  np.testing.assert_array_equal(_decoded_indices(decoded), np.floor(np.arange(20) * 2.5))


def test_output_size():
  assert video_io.output_size(1080, 1920, short_side=256) == (256, 455)
  assert video_io.output_size(1920, 1080, short_side=128) == (228, 128)
  assert video_io.output_size(240, 320) == (240, 320)
  assert video_io.output_size(240, 320, size=(224, 224)) == (224, 224)
  with pytest.raises(ValueError, match='at most one'):
    video_io.output_size(240, 320, short_side=10, size=(5, 5))


def test_iter_frames_streams(clips):
  it = video_io.iter_frames(clips[1]['mkv'], short_side=12)
  first = next(it)
  assert first.shape == (12, 16, 3)
  assert sum(1 for _ in it) == NUM_FRAMES - 1


def _bad_files(root, paths):
  data = paths['mkv'].read_bytes()
  mp4 = paths['mp4'].read_bytes()
  files = {
    'missing': (root / 'nope.mp4', None, 'file not found'),
    'empty': (root / 'empty.mp4', b'', 'empty file'),
    'garbage': (root / 'garbage.avi', bytes(range(256)) * 12, 'not a readable video'),
    'truncated': (root / 'cut.mkv', data[: len(data) // 2], 'truncated'),
    'truncated_header': (root / 'cut.mp4', mp4[: len(mp4) // 10], 'not a readable video'),
    'corrupt': (
      root / 'corrupt.mp4',
      mp4[: len(mp4) // 3] + bytes(len(mp4) // 3) + mp4[2 * len(mp4) // 3 :],
      'corrupt video data',
    ),
    'directory': (root / 'adir.mp4', 'dir', 'directory'),
  }
  for path, content, _ in files.values():
    if content == 'dir':
      path.mkdir()
    elif content is not None:
      path.write_bytes(content)
  return files


def test_bad_files_raise_video_error_naming_file_and_reason(clips, tmp_path):
  files = _bad_files(tmp_path, clips[1])
  for kind, (path, _, reason) in files.items():
    with pytest.raises(video_io.VideoError) as info:
      video_io.read_video(path, fps=8, short_side=12)
    err = info.value
    assert err.path == os.fspath(path), kind
    assert reason in err.reason, (kind, err.reason)
    assert os.fspath(path) in str(err), kind


def test_video_error_pickles():
  import pickle

  err = pickle.loads(pickle.dumps(video_io.VideoError('/a/b.mp4', 'empty file')))
  assert (err.path, err.reason) == ('/a/b.mp4', 'empty file')


def test_trim_pair_warns_how_much(caplog):
  clean = np.zeros((10, 2, 2, 3), np.uint8)
  foggy = np.ones((7, 2, 2, 3), np.uint8)
  with caplog.at_level(logging.WARNING, logger='tfds_fogact.video_io'):
    c, f, dropped = video_io.trim_pair(clean, foggy, name='clip_7')
  assert c.shape[0] == f.shape[0] == 7 and dropped == 3
  assert 'clip_7' in caplog.text and 'dropped the last 3 clean frames' in caplog.text
  caplog.clear()
  c, f, dropped = video_io.trim_pair(clean, clean)
  assert dropped == 0 and not caplog.text


def test_write_video_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match='even'):
    video_io.write_video(tmp_path / 'odd.mp4', np.zeros((2, 5, 6, 3), np.uint8), 10)
  with pytest.raises(ValueError, match='uint8'):
    video_io.write_video(tmp_path / 'f.mp4', np.zeros((2, 4, 6, 3), np.float32), 10)
  with pytest.raises(ValueError, match='codec'):
    video_io.write_video(tmp_path / 'f.mp4', np.zeros((2, 4, 6, 3), np.uint8), 10, codec='vp9')
  # Streaming from a generator.
  n = video_io.write_video(
    tmp_path / 'gen.mp4', (np.full((4, 6, 3), 9 * t, np.uint8) for t in range(5)), 10
  )
  assert n == 5 and len(video_io.read_video(tmp_path / 'gen.mp4')[0]) == 5
