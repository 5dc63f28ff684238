"""notebooks/colab_tpu.ipynb cannot rot: it is a valid notebook, and its code cells run in order
on CPU with the tiny settings (`FOGNET_NOTEBOOK_TINY=1`).

The cells run in one namespace with `exec`, as a kernel would run them; a line that starts
with `!` (shell) or `%` (IPython magic) needs a notebook and becomes `pass` (the install and
TensorBoard lines). The notebook's first markdown cell states the same rule.
"""
import os
import re

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_tpu.ipynb')
_NOTEBOOK_ONLY = re.compile(r'^(\s*)[!%]')


def python_source(cell_source: str) -> str:
  """The cell with each `!` / `%` line replaced by `pass` at the same indentation."""
  return '\n'.join(_NOTEBOOK_ONLY.sub(r'\1pass  # ', line) if _NOTEBOOK_ONLY.match(line)
                   else line for line in cell_source.splitlines())


def _notebook():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def test_notebook_is_valid_and_has_the_steps():
  nb = _notebook()
  assert nb.cells[0].cell_type == 'markdown' and 'FOGNET_NOTEBOOK_TINY' in nb.cells[0].source
  code = [c.source for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None
             for c in nb.cells if c.cell_type == 'code'), 'outputs are not stored'
  text = '\n'.join(code)
  for needed in ('TINY', 'pip install', 'jax.devices()', 'drive.mount', 'records.prepare',
                 'main.train_and_evaluate', '%tensorboard', 'main.evaluate_checkpoint',
                 "find_spec('fognet_jax.predict')", 'video_io.write_video'):
    assert needed in text, needed
  for line in text.splitlines():  # shell and magics only where the test can skip them
    if _NOTEBOOK_ONLY.match(line):
      assert re.match(r'\s*(!git clone|!pip install|%cd|%load_ext tensorboard|%tensorboard)',
                      line), line


def test_python_source_keeps_blocks_valid():
  src = python_source('if X:\n    !pip install -e .\n%load_ext tensorboard\ny = 1')
  assert src == 'if X:\n    pass  # pip install -e .\npass  # load_ext tensorboard\ny = 1'
  compile(src, 'cell', 'exec')


def test_notebook_runs_tiny_on_cpu(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('FOGNET_NOTEBOOK_TINY', '1')
  monkeypatch.setenv('FOGNET_NOTEBOOK_DIR', str(tmp_path))
  monkeypatch.chdir(ROOT)
  namespace = {'__name__': '__notebook__'}
  for i, cell in enumerate(c for c in _notebook().cells if c.cell_type == 'code'):
    try:
      exec(compile(python_source(cell.source), f'colab_tpu.ipynb code cell {i}', 'exec'),
           namespace)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f'code cell {i} failed: {type(e).__name__}: {e}\n--- cell ---\n{cell.source}')
  out = capsys.readouterr().out
  assert namespace['TINY'] and not namespace['IN_COLAB']
  workdir = namespace['WORKDIR']
  assert workdir.startswith(str(tmp_path))
  results, again = namespace['results'], namespace['again']
  assert results['step'] == 3 and results['num_videos'] > 0
  for key in ('top1', 'top5', 'num_videos', 'step'):
    assert again[key] == results[key], key
  for name in ('results.json', 'metrics.jsonl', 'eval_again/confusion_matrix.png',
               'test_clip.mp4'):
    assert os.path.exists(os.path.join(workdir, name)), name
  top5 = namespace['prediction']['top5']
  assert len(top5) == 5 and all(name in namespace['info'].class_names for name, _ in top5)
  assert 'true class:' in out
