"""The install step of notebooks/colab_tpu.ipynb: fognet_jax from a source checkout into the
running kernel's Python, keeping what the runtime already provides.

The notebook fetches the source (git clone, a copy of a Drive clone, or an unpacked sdist)
into a checkout, then runs this file with `runpy` and calls

  install(checkout, loaded_modules=sys.modules)

1. The requirements of the checkout's setup.py (`INSTALL_REQUIRES`) that an installed
   distribution meets are left alone. `tensorflow-cpu` is met by any TensorFlow build, so
   Colab's `tensorflow` is never replaced by `tensorflow-cpu`.
2. The others are installed with pip under a constraints file that pins the installed jax,
   jaxlib, libtpu, numpy, ml_dtypes, TensorFlow, Keras and protobuf, so that pip cannot move
   them. When those pins make the install impossible (a requirement needs a newer jax or
   numpy), it is retried with only TensorFlow, Keras and protobuf pinned. A jax older than the
   package needs is upgraded with its platform's extra (`jax[tpu]` where libtpu is installed).
3. The package itself: `pip install --no-deps -e CHECKOUT` (editable, so that `configs/` and
   the pretrained towers stay in the checkout, where the package looks for them). Skipped
   when fognet_jax is importable already at the checkout's version.
4. A distribution whose version pip changed while the kernel has imported one of its modules
   is only picked up by a new Python process: `RestartNeeded` is raised, its message says
   so (Runtime > Restart session, then run all cells again; the install is then skipped).

Standard library only: it runs before any requirement is installed.
"""

import ast
import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, Iterable, Mapping, Optional, Sequence

PACKAGE = 'fognet_jax'
# Distributions that meet a requirement of the name on the left (any TensorFlow build).
EQUIVALENT = {
    'tensorflow-cpu': ('tensorflow-cpu', 'tensorflow', 'tensorflow-tpu', 'tensorflow-gpu',
                       'tf-nightly', 'tf-nightly-cpu', 'tensorflow-macos', 'intel-tensorflow'),
}
# Pinned at their installed versions in every pip call: the TensorFlow stack.
ALWAYS_PINNED = ('tensorflow', 'tensorflow-cpu', 'tensorflow-tpu', 'tensorflow-gpu',
                 'tf-nightly', 'tf-keras', 'keras', 'protobuf')
# Pinned too in the first attempt: the jax stack and numpy (imported by every kernel).
PINNED_IF_POSSIBLE = ('jax', 'jaxlib', 'libtpu', 'libtpu-nightly', 'numpy', 'ml-dtypes')
JAX_STACK = ('jax', 'jaxlib', 'libtpu', 'libtpu-nightly')


class InstallError(RuntimeError):
  """pip could not install the package or its requirements."""


class RestartNeeded(RuntimeError):
  """Installed versions changed under modules the running kernel has imported."""


def canonical(name: str) -> str:
  """PEP 503 normalised distribution name."""
  return re.sub(r'[-_.]+', '-', name).lower()


_REQUIREMENT = re.compile(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$')
_SPEC = re.compile(r'^(===|==|!=|~=|>=|<=|>|<)\s*([^\s,]+)$')


@dataclasses.dataclass(frozen=True)
class Requirement:
  name: str  # canonical
  text: str  # as written in setup.py
  extras: str
  specs: tuple  # ((operator, version), ...)


def parse_requirement(text: str) -> Requirement:
  """'jax>=0.7' -> Requirement('jax', ..., specs=(('>=', '0.7'),)); markers are not used."""
  body = text.split(';', 1)[0]
  m = _REQUIREMENT.match(body)
  if not m:
    raise ValueError(f'cannot read the requirement {text!r}')
  specs = []
  for part in filter(None, (p.strip() for p in m.group(3).split(','))):
    s = _SPEC.match(part)
    if not s:
      raise ValueError(f'cannot read the version specifier {part!r} of {text!r}')
    specs.append((s.group(1), s.group(2)))
  return Requirement(canonical(m.group(1)), text.strip(), m.group(2) or '', tuple(specs))


def version_key(version: str) -> tuple:
  """The release numbers of a version ('0.7.2rc1+cpu' -> (0, 7, 2))."""
  m = re.match(r'\s*v?(\d+(?:\.\d+)*)', version)
  return tuple(int(x) for x in m.group(1).split('.')) if m else ()


def _cmp(a: str, b: str) -> int:
  ka, kb = version_key(a), version_key(b)
  n = max(len(ka), len(kb))
  ka, kb = ka + (0,) * (n - len(ka)), kb + (0,) * (n - len(kb))
  return (ka > kb) - (ka < kb)


def satisfies(version: str, specs: Iterable[tuple]) -> bool:
  """Whether `version` meets every (operator, version) of `specs` (release numbers only)."""
  for op, want in specs:
    if want.endswith('.*'):  # ==X.Y.* / !=X.Y.*
      prefix = version_key(want[:-2])
      match = version_key(version)[:len(prefix)] == prefix
      ok = match if op == '==' else not match
    elif op == '~=':
      prefix = version_key(want)[:-1]
      ok = _cmp(version, want) >= 0 and version_key(version)[:len(prefix)] == prefix
    else:
      c = _cmp(version, want)
      ok = {'==': c == 0, '===': version == want, '!=': c != 0, '>=': c >= 0, '<=': c <= 0,
            '>': c > 0, '<': c < 0}[op]
    if not ok:
      return False
  return True


def installed_versions() -> dict[str, str]:
  """{canonical distribution name: version} of the running Python's environment."""
  importlib.invalidate_caches()
  out = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata['Name']
    if name:
      out.setdefault(canonical(name), dist.version)
  return out


def _setup_py(checkout: str) -> ast.Module:
  path = os.path.join(checkout, 'setup.py')
  if not os.path.isfile(path):
    raise InstallError(f'{checkout} has no setup.py: not a fognet_jax source tree')
  with open(path, encoding='utf-8') as f:
    return ast.parse(f.read(), path)


def read_requirements(checkout: str) -> list[str]:
  """INSTALL_REQUIRES of the checkout's setup.py, read without running it."""
  for node in _setup_py(checkout).body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], 'id', None) == 'INSTALL_REQUIRES'):
      return list(ast.literal_eval(node.value))
  raise InstallError(f'{checkout}/setup.py defines no INSTALL_REQUIRES list')


def read_version(checkout: str) -> str:
  """The `version=` of the checkout's setup() call."""
  for node in ast.walk(_setup_py(checkout)):
    if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup':
      for kw in node.keywords:
        if kw.arg == 'version':
          return str(ast.literal_eval(kw.value))
  raise InstallError(f'{checkout}/setup.py has no setup(version=...)')


@dataclasses.dataclass
class Plan:
  """What pip has to do: `install` (requirement strings) under `constraints` (first attempt)
  or `relaxed` (second attempt) pins."""
  install: list
  constraints: list
  relaxed: list
  kept: dict  # requirement -> the installed distribution and version that meets it


def _jax_requirement(req: Requirement, installed: Mapping[str, str]) -> str:
  """`jax[tpu]>=X` where libtpu is installed (a TPU runtime), `jax[cudaNN]` with a CUDA
  plugin, else the requirement as written."""
  if req.extras:
    return req.text
  spec = ','.join(op + v for op, v in req.specs)
  if 'libtpu' in installed or 'libtpu-nightly' in installed:
    return f'jax[tpu]{spec}'
  for cuda in ('cuda13', 'cuda12'):
    if f'jax-{cuda}-plugin' in installed or f'jax-{cuda}-pjrt' in installed:
      return f'jax[{cuda}]{spec}'
  return req.text


def plan(requirements: Sequence[str], installed: Mapping[str, str]) -> Plan:
  """The pip work for `requirements` given the `installed` {name: version}."""
  install, kept = [], {}
  for text in requirements:
    req = parse_requirement(text)
    meets = [d for d in EQUIVALENT.get(req.name, (req.name,))
             if d in installed and satisfies(installed[d], req.specs)]
    if meets:
      kept[req.text] = f'{meets[0]} {installed[meets[0]]}'
    elif req.name == 'jax':
      install.append(_jax_requirement(req, installed))
    else:
      install.append(req.text)
  upgrading = {parse_requirement(t).name for t in install}
  if 'jax' in upgrading:  # jaxlib and libtpu move with jax
    upgrading.update(JAX_STACK)

  def pins(names):
    return [f'{n}=={installed[n]}' for n in names if n in installed and n not in upgrading]

  return Plan(install=install, constraints=pins(ALWAYS_PINNED + PINNED_IF_POSSIBLE),
              relaxed=pins(ALWAYS_PINNED), kept=kept)


def restart_needed(before: Mapping[str, str], after: Mapping[str, str],
                   loaded_modules: Iterable[str],
                   module_distributions: Mapping[str, Sequence[str]]) -> dict:
  """{distribution: (old, new)} of the changed distributions that provide a loaded module."""
  changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
  loaded = {m.split('.', 1)[0] for m in loaded_modules}
  out = {}
  for module in sorted(loaded):
    for dist in module_distributions.get(module, ()):
      if canonical(dist) in changed:
        out[canonical(dist)] = changed[canonical(dist)]
  return out


def run_pip(args: Sequence[str], log: Callable[[str], None] = print) -> None:
  """`python -m pip ARGS` with its output streamed to `log`; InstallError on failure."""
  cmd = [sys.executable, '-m', 'pip', *args]
  log('$ ' + ' '.join(cmd))
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  tail = []
  for line in proc.stdout:
    log(line.rstrip('\n'))
    tail = (tail + [line.rstrip('\n')])[-30:]
  if proc.wait():
    raise InstallError(f'pip failed (exit status {proc.returncode}): {" ".join(args)}\n'
                       + '\n'.join(tail))


def _pip_install(requirements: Sequence[str], pins: Sequence[str], pip, log) -> None:
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as f:
    f.write('\n'.join(pins) + '\n')
  try:
    pip(['install', '--disable-pip-version-check', '-c', f.name, *requirements], log)
  finally:
    os.unlink(f.name)


def install(checkout: str, *, loaded_modules: Iterable[str] = (),
            pip: Optional[Callable] = None, log: Callable[[str], None] = print) -> dict:
  """Installs the requirements the environment lacks and the package from `checkout`.

  Args:
    checkout: the source tree (setup.py, fognet_jax/, configs/).
    loaded_modules: the names of the modules the kernel has imported (`sys.modules`).
    pip: `pip(args, log)` runner (default: `python -m pip` of this interpreter).
    log: where progress lines go.

  Returns:
    {'installed': requirements pip installed, 'package': 'installed' or 'skipped',
     'version': the checkout's version, 'changed': {dist: (old, new)}}.

  Raises:
    InstallError: pip failed, or the checkout is not a source tree.
    RestartNeeded: a changed distribution has modules the kernel imported.
  """
  pip = pip or run_pip
  checkout = os.path.abspath(checkout)
  version = read_version(checkout)
  before = installed_versions()
  todo = plan(read_requirements(checkout), before)
  for req, dist in todo.kept.items():
    log(f'{req}: {dist} is installed (kept)')
  if todo.install:
    log(f'installing {", ".join(todo.install)} with {", ".join(todo.constraints) or "no pins"}')
    try:
      _pip_install(todo.install, todo.constraints, pip, log)
    except InstallError as e:
      if todo.relaxed == todo.constraints:
        raise
      log(f'pip cannot keep the installed versions ({e.args[0].splitlines()[0]}); '
          f'retrying with only {", ".join(todo.relaxed) or "no pins"}')
      _pip_install(todo.install, todo.relaxed, pip, log)
  current = before.get(canonical(PACKAGE))
  if current == version and importlib.util.find_spec(PACKAGE) is not None:
    where = os.path.dirname(importlib.util.find_spec(PACKAGE).origin or '')
    log(f'{PACKAGE} {version} is installed already ({where}): the package install is skipped '
        f'(pip uninstall {PACKAGE} first to install it from {checkout})')
    package = 'skipped'
  else:
    pip(['install', '--disable-pip-version-check', '--no-deps', '-e', checkout], log)
    package = 'installed'
  after = installed_versions()
  changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
  loaded = restart_needed(before, after, loaded_modules,
                          importlib.metadata.packages_distributions())
  if loaded:
    what = ', '.join(f'{n} {old} -> {new}' for n, (old, new) in sorted(loaded.items()))
    raise RestartNeeded(
        f'pip changed {what}, already imported by this Python session. Runtime > Restart '
        'session, then run all cells again from the top (Runtime > Run all): the install '
        'is done, and this cell then skips it.')
  return {'installed': list(todo.install), 'package': package, 'version': version,
          'changed': changed}
