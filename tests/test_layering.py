"""The package's import graph: one-way layers, no cycles, imports at the top of each module.

Read from the source (ast), so the checks see function-local imports too.
"""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('fognet_jax', 'tfds_fogact')
# Libraries a module may import inside a function: optional, heavy, or only needed there.
LOCAL_IMPORTS_ALLOWED = (
  'tensorflow',
  'matplotlib',
  'huggingface_hub',
  'flax.metrics',
  'array_record',
)


def _modules() -> dict[str, str]:
  """module name -> file path of every module of the two packages."""
  found = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          found[rel[: -len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return found


def _imports(path: str, module: str, known: set[str]):
  """[(imported module of the packages or library name, is_top_level)] of one file."""
  tree = ast.parse(open(path).read(), path)
  top = set(id(n) for n in tree.body)
  out = []
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      names = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]
    for name in names:
      out.append((name, id(node) in top))
  return out


def _graph():
  mods = _modules()
  known = set(mods)
  graph, local = {}, []
  for module, path in mods.items():
    edges = set()
    for name, at_top in _imports(path, module, known):
      target = name
      while target and target not in known:
        target = target.rpartition('.')[0]
      if target and target != module:
        edges.add(target)
      if not at_top and not target:
        local.append((module, name))
      elif not at_top and target:
        local.append((module, target))
    graph[module] = edges
  return graph, local


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []
  sys.setrecursionlimit(10000)

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  graph, _ = _graph()
  # A package's __init__ importing its own submodules (the builder registry) is not a layer
  # reaching back up; every other edge counts.
  pruned = {
    m: {t for t in ts if not (t.startswith(m + '.') and m in PACKAGES)} for m, ts in graph.items()
  }
  assert _cycles(pruned) == []


def test_the_builders_do_not_import_the_trainer():
  graph, _ = _graph()
  up = sorted(
    (m, t)
    for m, ts in graph.items()
    if m.startswith('tfds_fogact')
    for t in ts
    if t.startswith('fognet_jax')
  )
  assert up == []


@pytest.mark.parametrize(
  'lower',
  [
    'fognet_jax.evaluate',
    'fognet_jax.train',
    'fognet_jax.input_pipeline',
    'fognet_jax.models.fognet',
    'fognet_jax.models.clip',
    'fognet_jax.records',
    'fognet_jax.weights',
  ],
)
def test_lower_layers_do_not_import_the_entry_point_or_the_trainer(lower):
  graph, _ = _graph()
  assert 'fognet_jax.main' not in graph[lower]
  if lower != 'fognet_jax.train':
    assert 'fognet_jax.train' not in graph[lower]


def test_models_import_nothing_of_the_package_outside_models():
  """The model code is a layer of its own: no loader, config reader or loss."""
  graph, _ = _graph()
  models = [m for m in graph if m.startswith('fognet_jax.models.')]
  assert len(models) >= 8, models
  outside = sorted(
    (m, t) for m in models for t in graph[m] if not t.startswith('fognet_jax.models')
  )
  assert outside == []


def test_imports_are_at_the_top_except_optional_libraries():
  _, local = _graph()
  bad = [(m, name) for m, name in local if not name.startswith(LOCAL_IMPORTS_ALLOWED)]
  assert bad == []
