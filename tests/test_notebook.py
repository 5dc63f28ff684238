"""notebooks/colab_tpu.ipynb runs as shipped, in a real IPython kernel (nbclient + ipykernel).

The notebook is executed cell by cell as Colab would, with two settings only: the environment
variable `FOGNET_NOTEBOOK_TINY=1` (CPU smoke sizes) and the Settings form's `SOURCE` field
filled in, as a user fills it in. The full run's SOURCE is a git repository holding the
project's files (a fork, as far as the notebook can tell): the install cell really clones it,
reads its requirements and runs the installer, whose pip steps find nothing to do here (every
requirement is installed, and fognet_jax is installed at the same version). Shell steps and
magics (TensorBoard) run for real; nothing is skipped.
"""

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tensorboard import manager as tensorboard_manager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_tpu.ipynb')
_FORM_SOURCE = re.compile(r"""^SOURCE = '[^']*'(?=\s+# @param \{type:"string"\}$)""", re.M)
_HOW = 'Set SOURCE in the Settings form'
VERSION = re.search(
  r"""version=['"]([^'"]+)['"]""", open(os.path.join(ROOT, 'setup.py')).read()
).group(1)


def _notebook():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def with_source(nb, source: str):
  """`nb` with the Settings form's SOURCE field set to `source`."""
  settings = _code_cells(nb)[0]
  settings.source, n = _FORM_SOURCE.subn(f'SOURCE = {source!r}', settings.source)
  assert n == 1, 'the first code cell has no `SOURCE = ...  # @param` form field'
  return nb


def install_prefix(nb):
  """The notebook up to and including its install cell (the one that fetches SOURCE)."""
  cells = []
  for cell in nb.cells:
    cells.append(cell)
    if cell.cell_type == 'code' and 'fetch(SOURCE' in cell.source:
      break
  else:
    raise AssertionError('no install cell')
  nb.cells = cells
  return nb


def execute(nb, cwd, timeout=600):
  os.makedirs(cwd, exist_ok=True)
  NotebookClient(
    nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(cwd)}}
  ).execute()
  return nb


def text_of(cell) -> str:
  parts = []
  for out in cell.get('outputs', []):
    if out.output_type == 'stream':
      parts.append(out.text)
    elif out.output_type == 'error':
      parts.append(f'{out.ename}: {out.evalue}')
    elif 'text/plain' in out.get('data', {}):
      parts.append(out.data['text/plain'])
  return ''.join(parts)


@pytest.fixture(scope='module')
def source_repo(tmp_path_factory):
  """A git repository of the working tree's files (tracked and untracked, not ignored)."""
  # The notebook's installer skips the package install only when fognet_jax is installed at
  # the source's version; otherwise it would point this environment at a temporary clone.
  try:
    installed = importlib.metadata.version('fognet_jax')
  except importlib.metadata.PackageNotFoundError:
    installed = None
  assert installed == VERSION, (
    f'fognet_jax {VERSION} must be installed (pip install -e .) for this test, found {installed}'
  )
  repo = tmp_path_factory.mktemp('source') / 'fognet_jax'
  listed = (
    subprocess.run(
      ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
      cwd=ROOT,
      capture_output=True,
      check=True,
    )
    .stdout.decode()
    .split('\0')
  )
  for rel in filter(None, listed):
    src = os.path.join(ROOT, rel)
    if os.path.isfile(src) and not os.path.islink(src):
      os.makedirs(os.path.dirname(repo / rel), exist_ok=True)
      shutil.copy2(src, repo / rel)
  git = ['git', '-c', 'user.name=test', '-c', 'user.email=test@example.invalid']
  subprocess.run(git + ['init', '-q'], cwd=repo, check=True)
  subprocess.run(git + ['add', '-A'], cwd=repo, check=True)
  subprocess.run(git + ['commit', '-q', '-m', 'source'], cwd=repo, check=True)
  return repo


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """The kernel's environment: tiny, local files under tmp_path, this venv's tools on PATH."""
  monkeypatch.setenv('FOGNET_NOTEBOOK_TINY', '1')
  monkeypatch.setenv('FOGNET_NOTEBOOK_DIR', str(tmp_path / 'local'))
  monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  return tmp_path / 'local'


def _stop_tensorboards(under):
  """Stops the TensorBoard servers the notebook started (logdir under `under`)."""
  for info in tensorboard_manager.get_all():
    if str(info.logdir).startswith(str(under)):
      try:
        os.kill(info.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass


def test_notebook_is_valid_and_has_the_steps():
  nb = _notebook()
  intro = nb.cells[0]
  assert intro.cell_type == 'markdown'
  for needed in ('SOURCE', 'git URL', 'Drive', 'sdist', 'Restart session', 'FOGNET_NOTEBOOK_TINY'):
    assert needed in intro.source, needed
  code = _code_cells(nb)
  assert all(not c.outputs and c.execution_count is None for c in code), 'outputs are stored'
  assert '# @param' in code[0].source and _FORM_SOURCE.search(code[0].source)
  assert re.search(r"^SOURCE = ''", code[0].source, re.M), 'SOURCE ships empty'
  text = '\n'.join(c.source for c in code)
  for needed in (
    'subprocess.run(',
    'colab_install.py',
    'jax.devices()',
    'drive.mount',
    'records.prepare',
    'main.train_and_evaluate',
    '%tensorboard',
    'main.evaluate_checkpoint',
    "find_spec('fognet_jax.predict')",
    'video_io.write_video',
  ):
    assert needed in text, needed
  assert 'OWNER' not in text
  for line in text.splitlines():  # no shell escapes: their failures would not stop the notebook
    assert not line.lstrip().startswith('!'), line


def test_notebook_runs_in_a_kernel_from_a_git_source(source_repo, kernel_env, tmp_path):
  nb = with_source(_notebook(), f'file://{source_repo}')
  try:
    execute(nb, tmp_path / 'cwd', timeout=900)
  except CellExecutionError as e:
    pytest.fail(f'the notebook stopped: {e}'[:6000])
  finally:
    _stop_tensorboards(tmp_path)
  code = _code_cells(nb)
  assert all(c.execution_count for c in code)
  install = text_of(code[1])
  checkout = kernel_env / 'fognet_jax'
  assert f'file://{source_repo} -> {checkout}' in install
  assert 'tensorflow-cpu: tensorflow' in install and '(kept)' in install  # nothing reinstalled
  assert f'fognet_jax {VERSION} is installed already' in install and 'skipped' in install
  head = lambda d: (
    subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=d, capture_output=True, text=True, check=True
    ).stdout
  )
  assert head(checkout) == head(source_repo)  # a clone of the source
  workdir = kernel_env / 'runs' / 'synthetic_tiny'
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  with open(workdir / 'eval_again' / 'results.json') as f:
    again = json.load(f)
  assert results['step'] == 3 and results['num_videos'] > 0
  for key in ('top1', 'top5', 'num_videos', 'step'):
    assert again[key] == results[key], key
  for name in ('metrics.jsonl', 'eval_again/confusion_matrix.png', 'test_clip.mp4'):
    assert (workdir / name).exists(), name
  assert 'logged steps; last:' in text_of(code[6])
  with open(workdir / 'class_names.json') as f:
    class_names = json.load(f)
  predict_out = text_of(code[8])
  assert 'true class:' in predict_out
  top5 = [line.split(None, 1) for line in predict_out.splitlines()[-5:]]
  assert len(top5) == 5 and all(name in class_names for _, name in top5)
  for leftover in ('notebook_runs', os.path.join('notebooks', 'notebook_runs')):
    assert not os.path.exists(os.path.join(ROOT, leftover))


def _fails_at_install(nb, cwd):
  with pytest.raises(CellExecutionError) as e:
    execute(nb, cwd, timeout=300)
  install = _code_cells(nb)[1]
  assert [o.output_type for o in install.outputs][-1] == 'error'
  assert all(c.execution_count is None for c in _code_cells(nb)[2:])  # it stopped there
  return e.value


@pytest.mark.parametrize(
  'kind', ['missing_path', 'bad_git_url', 'folder_not_a_clone', 'not_an_sdist']
)
def test_a_bad_source_stops_at_the_install_cell(kind, kernel_env, tmp_path):
  (tmp_path / 'folder').mkdir()
  (tmp_path / 'notes.txt').write_text('x')
  source, message = {
    'missing_path': ('/nonexistent/fognet_jax', 'is not a git URL, an existing folder'),
    'bad_git_url': ('file:///nonexistent/fognet_jax.git', 'git clone --depth 1'),
    'folder_not_a_clone': (str(tmp_path / 'folder'), 'is a folder but not a fognet_jax clone'),
    'not_an_sdist': (str(tmp_path / 'notes.txt'), 'is a file but not an sdist'),
  }[kind]
  nb = with_source(_notebook(), source)
  nb.cells = nb.cells[: nb.cells.index(_code_cells(nb)[2]) + 1]  # up to the devices cell
  error = _fails_at_install(nb, tmp_path / 'cwd')
  assert error.ename == 'SourceError' and message in error.evalue and _HOW in error.evalue


def test_an_empty_source_in_colab_stops_at_the_install_cell(kernel_env, tmp_path, monkeypatch):
  fake = tmp_path / 'fake_colab'
  (fake / 'google' / 'colab').mkdir(parents=True)  # `import google.colab` succeeds
  (fake / 'google' / 'colab' / '__init__.py').write_text('')
  monkeypatch.setenv('PYTHONPATH', str(fake))
  nb = _notebook()
  nb.cells = nb.cells[: nb.cells.index(_code_cells(nb)[2]) + 1]
  error = _fails_at_install(nb, tmp_path / 'cwd')
  assert 'IN_COLAB=True' in text_of(_code_cells(nb)[0])
  assert error.ename == 'SourceError' and 'SOURCE is empty' in error.evalue
  assert _HOW in error.evalue


def test_install_from_a_drive_folder_and_from_an_sdist(source_repo, kernel_env, tmp_path):
  clone = tmp_path / 'drive' / 'fognet_jax'
  subprocess.run(['git', 'clone', '-q', str(source_repo), str(clone)], check=True)
  (clone / 'workdir').mkdir()  # run directories are not copied
  subprocess.run(
    [sys.executable, 'setup.py', '-q', 'sdist', '-d', str(tmp_path / 'dist')],
    cwd=clone,
    check=True,
    capture_output=True,
  )
  (sdist,) = (tmp_path / 'dist').iterdir()
  assert sdist.name == f'fognet_jax-{VERSION}.tar.gz'
  shutil.rmtree(clone / 'fognet_jax.egg-info')
  checkout = kernel_env / 'fognet_jax'
  for source in (clone, sdist):
    nb = execute(install_prefix(with_source(_notebook(), str(source))), tmp_path / 'cwd')
    out = text_of(_code_cells(nb)[1])
    assert f'{source} -> {checkout}' in out and 'fognet_jax from' in out
    for rel in (
      'setup.py',
      'configs/synthetic.py',
      'notebooks/colab_install.py',
      'fognet_jax/predict.py',
      'tfds_fogact/synthetic_fog_act/renderer.py',
    ):
      assert (checkout / rel).is_file(), (source, rel)
    assert not (checkout / '.git').exists() and not (checkout / 'workdir').exists()
