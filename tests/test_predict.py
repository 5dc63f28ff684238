"""`python -m fognet_jax.predict`: a run trained with configs/synthetic.py recognises the action
in a video written by PyAV; files that are missing or not videos are named and skipped."""

import io
import json
import os

import main_testutil as U
import numpy as np
import pytest

from fognet_jax import predict
from tfds_fogact import video_io
from tfds_fogact.synthetic_fog_act import renderer

# main_testutil.TINY with 4 steps (checkpoints 2 and 4) and 2 test clips per video.
TINY = U.TINY + [
  '--config.train.num_train_steps=4',
  '--config.train.log_every_steps=2',
  '--config.data.num_clips=2',
]
_run = U.run_module


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A run of configs/synthetic.py (tiny: 4 steps on a miniature generated dataset)."""
  base = tmp_path_factory.mktemp('predict')
  workdir = str(base / 'run')
  r = _run(
    'fognet_jax.main',
    '--config=configs/synthetic.py:scratch',
    f'--workdir={workdir}',
    '--mode=train_only',
    *U.tiny_data_args(base),
    *TINY,
  )
  assert r.returncode == 0, r.stderr[-4000:]
  return workdir


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  """A foggy clip of the generated benchmark's kind, written with PyAV (H.264)."""
  clip = np.stack([np.full((48, 64, 3), 40 + 4 * t, np.uint8) for t in range(20)])
  clip[:, 10:30, 20:40] = 220  # a bright patch
  path = str(tmp_path_factory.mktemp('videos') / 'clip.mp4')
  video_io.write_video(path, clip, fps=10)
  return path


def test_json_lines_for_videos_and_one_line_errors_for_bad_files(run_dir, video, tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('not a video')
  missing = str(tmp_path / 'missing.mp4')
  r = _run('fognet_jax.predict', f'--workdir={run_dir}', video, missing, str(text), video, '--json')
  assert r.returncode == 1, r.stderr[-3000:]  # some files failed
  lines = [json.loads(line) for line in r.stdout.splitlines()]
  assert [x['video'] for x in lines] == [video, video]  # the good file, both times
  errors = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [f'error: {missing}: no such file', errors[1]]
  assert str(text) in errors[1]
  first = lines[0]
  assert set(first) == {'video', 'top5', 'num_frames'} and first['num_frames'] == 20
  names = [c for c, _ in first['top5']]
  probs = [p for _, p in first['top5']]
  assert len(names) == 5 and set(names) <= set(renderer.CLASS_NAMES)
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
  assert lines[1] == first  # deterministic


def test_the_named_checkpoint_is_used_and_text_output(run_dir, video):
  with open(os.path.join(run_dir, 'class_names.json')) as f:
    assert json.load(f) == list(renderer.CLASS_NAMES)  # the label order of the run
  latest = predict.Predictor(run_dir)
  earlier = predict.Predictor(run_dir, checkpoint='2')
  assert (latest.step, earlier.step) == (4, 2)
  p4, n = latest.probabilities(video)
  p2, _ = earlier.probabilities(video)
  assert n == 20 and p4.shape == (len(renderer.CLASS_NAMES),)
  np.testing.assert_allclose(p4.sum(), 1.0, rtol=1e-5)
  assert np.max(np.abs(p4 - p2)) > 1e-6  # the weights come from the checkpoint
  out, err = io.StringIO(), io.StringIO()
  assert predict.run([video], run_dir, out=out, err=err) == 0
  lines = out.getvalue().splitlines()
  assert lines[0] == f'{video} (20 frames, checkpoint step 4)' and len(lines) == 6
  top = latest.top(p4)
  assert lines[1].split() == [f'{top[0][1]:.3f}', top[0][0]]


def test_a_workdir_without_a_run_is_one_error(tmp_path):
  r = _run('fognet_jax.predict', f'--workdir={tmp_path}', 'x.mp4', timeout=120)
  assert r.returncode == 1
  assert f'no checkpoints directory {tmp_path}/checkpoints' in r.stderr


def _error_lines(stderr: str) -> list:
  return [line for line in stderr.splitlines() if line.startswith('error: ')]


def test_quiet_by_default_verbose_shows_library_logs(run_dir, video, tmp_path):
  missing = str(tmp_path / 'missing.mp4')
  r = _run('fognet_jax.predict', f'--workdir={run_dir}', missing)
  assert r.returncode == 1 and r.stdout == ''
  assert r.stderr.splitlines() == [f'error: {missing}: no such file']  # nothing but the error
  r = _run('fognet_jax.predict', f'--workdir={run_dir}', missing, '--verbose')
  assert r.returncode == 1
  lines = r.stderr.splitlines()
  assert lines[-1] == f'error: {missing}: no such file' and len(lines) > 5
  assert 'Restored checkpoint of step 4' in r.stderr  # the library's INFO lines


def test_open_vocabulary_labels(run_dir, video, tmp_path):
  """--labels / --labels_file rank any action names through the text tower."""
  with open(os.path.join(run_dir, 'class_names.json')) as f:
    class_names = json.load(f)
  default = _run('fognet_jax.predict', f'--workdir={run_dir}', video, '--json')
  assert default.returncode == 0 and default.stderr == '', default.stderr[-3000:]
  same = _run(
    'fognet_jax.predict',
    f'--workdir={run_dir}',
    video,
    '--json',
    '--labels=' + ','.join(class_names),
  )
  assert same.returncode == 0 and same.stderr == '', same.stderr[-3000:]
  assert json.loads(same.stdout) == json.loads(default.stdout)  # same top-5, same probabilities

  labels = [
    'a person jumping',
    'a person bowing',
    'a person kicking a ball',
    'a person walking',
    'a person waving',
    'a person sitting down',
  ]
  path = tmp_path / 'labels.txt'
  path.write_text('\n'.join(labels) + '\n\n')  # one label a line; blank lines are skipped
  other = _run(
    'fognet_jax.predict', f'--workdir={run_dir}', video, '--json', f'--labels_file={path}'
  )
  assert other.returncode == 0 and other.stderr == '', other.stderr[-3000:]
  mine, theirs = json.loads(other.stdout), json.loads(default.stdout)
  names = [c for c, _ in mine['top5']]
  probs = [p for _, p in mine['top5']]
  assert len(names) == 5 and len(set(names)) == 5 and set(names) <= set(labels)
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
  assert mine['top5'] != theirs['top5']
  # in-process: the same labels give the same probabilities
  predictor = predict.Predictor(run_dir, labels=labels)
  assert predictor.class_names == labels
  probs_all, _ = predictor.probabilities(video)
  assert probs_all.shape == (len(labels),)
  np.testing.assert_allclose([p for _, p in predictor.top(probs_all)], probs, rtol=1e-5)


@pytest.mark.parametrize(
  'flag, message',
  [
    ('--labels=', '--labels is empty'),
    ('--labels= , ,', '--labels is empty'),
    ('--labels=jump,jump', "--labels names 'jump' twice"),
    ('--labels_file={missing}', '{missing}: no such file'),
    ('--labels_file={empty}', '{empty} holds no labels'),
  ],
)
def test_bad_labels_are_one_error(run_dir, video, tmp_path, flag, message):
  missing, empty = tmp_path / 'missing.txt', tmp_path / 'empty.txt'
  empty.write_text('\n \n')
  r = _run(
    'fognet_jax.predict',
    f'--workdir={run_dir}',
    video,
    flag.format(missing=missing, empty=empty),
    timeout=120,
  )
  assert r.returncode == 1 and r.stdout == ''
  assert r.stderr.splitlines() == ['error: ' + message.format(missing=missing, empty=empty)]


def test_labels_and_labels_file_together_are_one_error(run_dir, video, tmp_path):
  path = tmp_path / 'labels.txt'
  path.write_text('jump\n')
  r = _run(
    'fognet_jax.predict',
    f'--workdir={run_dir}',
    video,
    '--labels=jump',
    f'--labels_file={path}',
    timeout=120,
  )
  assert r.returncode == 1 and r.stdout == ''
  assert r.stderr.splitlines() == ['error: give --labels or --labels_file, not both']
