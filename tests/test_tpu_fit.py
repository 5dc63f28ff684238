"""The TPU fit tool: the real train step compiled for a TPU topology with XLA:TPU (libtpu's
compile-only client, no TPU), its rows and errors; a CPU run that never starts a TPU."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from fognet_jax.tools import tpu_fit
from fognet_jax.tools import tpu_topology

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The embedded demo's from-scratch recipe at the smallest size that is still the whole step
# (two streams, FAS, ME, CSA, uint8 frames with colour chains, AdamW).
TINY = """
from fognet_jax import config_lib

def get_config(arg=None):
  config = config_lib.load_config('synthetic:scratch')
  o = config.model.clip_overrides
  o.vision_layers, o.text_layers, o.image_size, o.patch_size = 1, 1, 64, 8
  config.data.image_size, config.data.num_frames = 64, 2
  return config
"""


def _env(**extra):
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ('JAX_PLATFORMS', 'XLA_FLAGS', 'TPU_LIBRARY_PATH')
  }
  env.update(extra)
  return env


def _tool(args, env=None):
  return subprocess.run(
    [sys.executable, '-m', 'fognet_jax.tools.tpu_fit', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=env or _env(),
    timeout=600,
  )


def _rows(stdout):
  """{batch: the row's fields} of the tool's table."""
  rows = {}
  for line in stdout.splitlines():
    fields = line.split()
    if fields and fields[0].isdigit():
      rows[int(fields[0])] = fields
  return rows


def test_the_real_step_compiles_for_a_tpu_and_its_memory_grows_with_the_batch(tmp_path):
  config = tmp_path / 'tiny_tpu.py'
  config.write_text(TINY)
  out = tmp_path / 'rows.json'
  run = _tool(
    [
      f'--config={config}',
      '--topology=v5e-1',
      '--batch=2,64',
      '--classes=4',
      '--prompt_len=8',
      f'--json_out={out}',
    ]
  )
  print(run.stdout, run.stderr)
  assert run.returncode == 0, run.stderr
  assert run.stderr == ''  # libtpu's lines about the missing TPU are not shown
  lines = run.stdout.splitlines()
  assert lines[0].startswith(
    f'topology v5e:1x1: 1 x TPU v5 lite, 16 GiB HBM per device; libtpu {tpu_topology.LIBTPU_VERSION}'
  )
  assert [row[-1] for row in _rows(run.stdout).values()] == ['compiled', 'compiled']
  assert lines[-1].startswith('largest global batch that fits: 64')
  result = json.loads(out.read_text())
  small, large = result['rows']
  assert (small['batch'], large['batch']) == (2, 64)
  for row in (small, large):
    assert row['error'] is None and row['fits'] and row['hbm'] == 16 * 2**30
  # 32x the clips: more temporaries (activations), a larger batch argument, more work.
  assert large['temp'] > small['temp'] + 2**20, (small, large)
  assert large['argument'] > small['argument'] + 2**20
  assert large['total'] > small['total'] + 2 * 2**20
  assert large['flops'] > 10 * small['flops'] > 0


def test_a_missing_libtpu_says_how_to_install_the_pinned_version(monkeypatch, tmp_path):
  monkeypatch.delenv('TPU_LIBRARY_PATH', raising=False)
  monkeypatch.setattr(sys, 'prefix', str(tmp_path))  # no <venv>/libtpu
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    'find_spec',
    lambda name, *a: None if name == 'libtpu' else real_find_spec(name, *a),
  )
  with pytest.raises(tpu_topology.ToolError, match=r'pip install .*libtpu==0\.0\.42\.1'):
    tpu_topology.find_libtpu()
  # On the command line: one `error:` line, status 1.
  run = _tool(['--config=configs/synthetic.py', f'--libtpu={tmp_path}/libtpu.so'])
  assert run.returncode == 1
  assert run.stderr.splitlines() == [f'error: --libtpu={tmp_path}/libtpu.so: no such file']


def test_a_batch_the_devices_do_not_divide_is_one_error_line():
  run = _tool(['--config=configs/synthetic.py:scratch', '--topology=v2-8', '--batch=12'])
  assert run.returncode == 1
  lines = run.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
    'error: config.train.batch_size: 12 is not divisible by devices (8)'
  ), run.stderr


def test_a_search_unit_the_devices_do_not_divide_is_one_error_line_before_any_compile():
  run = _tool(
    [
      '--config=configs/synthetic.py:scratch',
      '--topology=v2-8',
      '--batch=16',
      '--search',
      '--search_unit=12',
    ]
  )
  assert run.returncode == 1
  assert run.stderr.splitlines() == [
    'error: --search_unit=12: must be a positive multiple of devices x accumulation steps (8)'
  ], run.stderr
  assert 'compile' not in run.stdout, run.stdout  # refused before the table's first row


def test_the_makefile_installs_the_pinned_libtpu_where_jax_does_not_look():
  with open(os.path.join(REPO, 'Makefile')) as f:
    makefile = f.read()
  assert f'LIBTPU_VERSION ?= {tpu_topology.LIBTPU_VERSION}' in makefile
  assert '--target $(VENV)/libtpu' in makefile
  assert os.path.isfile(tpu_topology.find_libtpu())  # this suite's install has it


def test_a_cpu_run_starts_no_tpu():
  """libtpu in the environment must not change a CPU run: JAX tries to start a TPU with any
  libtpu it can import, which prints libtpu's start-up lines and costs about a second."""
  code = (
    'import jax, jax.numpy as jnp; from fognet_jax import train; '
    'print(jax.devices()[0].platform, float(jnp.ones(3).sum()))'
  )
  run = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300
  )
  assert run.returncode == 0, run.stderr
  assert run.stdout.split() == ['cpu', '3.0']
  assert 'tpu' not in run.stderr.lower(), run.stderr


def test_search_doubles_then_bisects_over_multiples_of_the_unit():
  tried = tpu_fit.search(
    lambda b: tpu_fit.Fit(
      batch=b, accum=1, remat=False, fsdp=False, error=None if b <= 40 else 'out of memory'
    ),
    unit=8,
  )
  assert [f.batch for f in tried] == [8, 16, 32, 64, 48, 40]
  assert tpu_fit.largest_fit(tried) == 40
  too_big = tpu_fit.search(
    lambda b: tpu_fit.Fit(batch=b, accum=1, remat=False, fsdp=False, error='out of memory'), unit=4
  )
  assert [f.batch for f in too_big] == [4] and tpu_fit.largest_fit(too_big) is None
  # Batches compiled before the search (the --batch list) are not compiled again.
  again = tpu_fit.search(
    lambda b: tpu_fit.Fit(
      batch=b, accum=1, remat=False, fsdp=False, error=None if b <= 40 else 'out of memory'
    ),
    unit=8,
    start=32,
    known=tried[2:4],
  )
  assert [f.batch for f in again] == [48, 40]


def test_topology_names():
  assert tpu_topology.topology_name('v5e-1') == 'v5e:1x1'
  assert tpu_topology.topology_name('v2-8') == 'v2:2x2'
  assert tpu_topology.topology_name('v4:2x2x1') == 'v4:2x2x1'
  with pytest.raises(tpu_topology.ToolError, match='--topology=v9: expected'):
    tpu_topology.topology_devices('v9', '/nonexistent/libtpu.so')
  assert tpu_topology.hbm_bytes('TPU v5 lite') == 16 * 2**30
  assert tpu_topology.hbm_bytes('TPU v2') == 8 * 2**30
  assert tpu_topology.hbm_bytes('cpu') is None


def test_the_paper_recipe_per_tpu_uses_the_fewest_micro_batches_that_fit():
  assert tpu_topology.paper_recipe('TPU v5 lite', 1) == (128, True, 4)  # 32 clips per micro-batch
  assert tpu_topology.paper_recipe('TPU v5 lite', 4) == (128, True, 1)  # v5e-4: 32 per chip
  assert tpu_topology.paper_recipe('TPU v2', 8) == (128, True, 1)  # v2-8: 16 per core
  assert tpu_topology.paper_recipe('TPU v6 lite', 1) == (128, True, 2)  # v6e-1: 64 per micro-batch
  assert tpu_topology.paper_recipe('TPU v4', 4) == (128, True, 1)  # v4-8: 32 per chip, remat
  assert tpu_topology.paper_recipe('TPU v2', 8, batch=256) == (256, True, 2)
  assert tpu_topology.paper_recipe('TPU v7x', 1) is None  # never compiled for
  for kind, (remat, per_device) in tpu_topology.PAPER_RECIPE_FITS.items():
    _, _, accum = tpu_topology.paper_recipe(kind, 1)
    assert 128 // accum <= per_device and 128 % accum == 0
