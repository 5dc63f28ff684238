"""notebooks/colab_install.py, the notebook's install step: Colab's TensorFlow and jax are kept
where the package allows it, pip runs only for what is missing, and a version change under an
imported module asks for a restart."""

import importlib.metadata
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
  spec = importlib.util.spec_from_file_location(
    'colab_install', os.path.join(ROOT, 'notebooks', 'colab_install.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ci = _load()
REQUIREMENTS = ci.read_requirements(ROOT)
# A Colab TPU runtime: TensorFlow (not tensorflow-cpu), the TPU build of jax, an older flax,
# no PyAV.
COLAB = {
  'tensorflow': '2.19.0',
  'jax': '0.7.2',
  'jaxlib': '0.7.2',
  'libtpu': '0.0.21',
  'numpy': '2.0.2',
  'ml-dtypes': '0.5.1',
  'protobuf': '5.29.5',
  'flax': '0.10.6',
  'optax': '0.2.5',
  'orbax-checkpoint': '0.11.20',
  'ml-collections': '1.1.0',
  'absl-py': '1.4.0',
  'einops': '0.8.1',
  'regex': '2024.11.6',
  'huggingface-hub': '0.34.4',
  'tensorflow-datasets': '4.9.9',
  'array-record': '0.7.2',
  'importlib-resources': '6.5.2',
  'pillow': '11.3.0',
  'tensorboard': '2.19.0',
  'matplotlib': '3.10.0',
}


def test_reads_setup_py_without_running_it():
  assert 'jax>=0.7' in REQUIREMENTS and 'tensorflow-cpu' in REQUIREMENTS
  assert ci.read_version(ROOT) == importlib.metadata.version('fognet_jax')


@pytest.mark.parametrize(
  'version, specs, ok',
  [
    ('0.7.2', [('>=', '0.7')], True),
    ('0.6.9', [('>=', '0.7')], False),
    ('0.11.0', [('>=', '0.11')], True),
    ('0.10.6', [('>=', '0.11')], False),
    ('2.13.0+cpu', [('==', '2.13.0')], True),
    ('1.2', [('~=', '1.1')], True),
    ('2.0', [('~=', '1.1')], False),
    ('1.4.3', [('==', '1.4.*')], True),
    ('1.5', [('>=', '1'), ('<', '1.5')], False),
    ('3', [], True),
  ],
)
def test_satisfies(version, specs, ok):
  assert ci.satisfies(version, specs) is ok


def test_on_colab_only_the_missing_requirements_are_installed_with_the_stack_pinned():
  plan = ci.plan(REQUIREMENTS, COLAB)
  assert sorted(plan.install) == ['av', 'flax>=0.11', 'grain']  # missing, or older than needed
  assert plan.kept['tensorflow-cpu'] == 'tensorflow 2.19.0'  # Colab's TensorFlow meets it
  assert plan.kept['jax>=0.7'] == 'jax 0.7.2'
  for pin in (
    'tensorflow==2.19.0',
    'jax==0.7.2',
    'jaxlib==0.7.2',
    'libtpu==0.0.21',
    'numpy==2.0.2',
    'protobuf==5.29.5',
  ):
    assert pin in plan.constraints, pin
  assert 'tensorflow==2.19.0' in plan.relaxed and not any(
    p.startswith(('jax', 'numpy')) for p in plan.relaxed
  )


def test_an_old_jax_is_upgraded_with_its_platform_extra_and_not_pinned():
  plan = ci.plan(REQUIREMENTS, dict(COLAB, jax='0.5.2', jaxlib='0.5.1'))
  assert 'jax[tpu]>=0.7' in plan.install
  assert not any(p.startswith(('jax=', 'jaxlib=', 'libtpu=')) for p in plan.constraints)
  assert 'tensorflow==2.19.0' in plan.constraints and 'numpy==2.0.2' in plan.constraints
  cpu = ci.plan(REQUIREMENTS, {k: v for k, v in COLAB.items() if k != 'libtpu'} | {'jax': '0.5'})
  assert 'jax>=0.7' in cpu.install


def test_nothing_to_do_in_an_environment_that_has_everything():
  """This test environment: every requirement installed, fognet_jax at the source's version."""
  calls = []
  done = ci.install(
    ROOT, loaded_modules=['jax', 'numpy'], pip=lambda a, log: calls.append(a), log=lambda line: None
  )
  assert calls == [] and done['package'] == 'skipped' and done['installed'] == []


def _source(tmp_path, requirements, version='9.9.9'):
  (tmp_path / 'setup.py').write_text(
    f'INSTALL_REQUIRES = {requirements!r}\n'
    f'setup(name="fognet_jax", version={version!r}, install_requires=INSTALL_REQUIRES)\n'
  )
  return str(tmp_path)


def test_pip_installs_the_missing_requirement_pinned_then_the_package_without_deps(tmp_path):
  checkout = _source(tmp_path, ['numpy', 'surely-not-installed-dist>=1'])
  calls = []

  def pip(args, log):
    pins = open(args[args.index('-c') + 1]).read().split() if '-c' in args else None
    calls.append((list(args), pins))

  done = ci.install(checkout, pip=pip, log=lambda line: None)
  (first, pins), (second, _) = calls
  assert first[-1] == 'surely-not-installed-dist>=1' and 'numpy' not in first
  assert f'numpy=={importlib.metadata.version("numpy")}' in pins
  assert second == ['install', '--disable-pip-version-check', '--no-deps', '-e', checkout]
  assert done['package'] == 'installed'


def test_when_the_pins_cannot_hold_pip_retries_with_only_tensorflow_pinned(tmp_path):
  checkout = _source(tmp_path, ['surely-not-installed-dist'])
  pins_seen = []

  def pip(args, log):
    if '-c' in args:
      pins_seen.append(open(args[args.index('-c') + 1]).read().split())
      if len(pins_seen) == 1:
        raise ci.InstallError('pip failed: ResolutionImpossible')

  lines = []
  ci.install(checkout, pip=pip, log=lines.append)
  strict, relaxed = pins_seen
  assert any(p.startswith('numpy==') for p in strict)
  assert not any(p.startswith(('numpy==', 'jax==')) for p in relaxed)
  assert any(p.startswith(('tensorflow', 'protobuf')) for p in relaxed)
  assert any('retrying with only' in line for line in lines)


def test_a_changed_version_under_an_imported_module_asks_for_a_restart(tmp_path, monkeypatch):
  checkout = _source(tmp_path, ['surely-not-installed-dist'])
  snapshots = iter([{'numpy': '2.0.2', 'jax': '0.7.2'}, {'numpy': '2.3.0', 'jax': '0.7.2'}])
  monkeypatch.setattr(ci, 'installed_versions', lambda: next(snapshots))
  with pytest.raises(
    ci.RestartNeeded,
    match=r'numpy 2\.0\.2 -> 2\.3\.0.*Runtime > Restart '
    r'session, then run all cells again',
  ):
    ci.install(
      checkout,
      loaded_modules=['numpy.linalg', 'os'],
      pip=lambda a, log: None,
      log=lambda line: None,
    )
  # not imported: no restart needed
  assert (
    ci.restart_needed({'numpy': '2.0.2'}, {'numpy': '2.3.0'}, ['os'], {'numpy': ['numpy']}) == {}
  )
  assert ci.restart_needed(
    {'numpy': '2.0.2'}, {'numpy': '2.3.0'}, ['numpy'], {'numpy': ['numpy']}
  ) == {'numpy': ('2.0.2', '2.3.0')}
