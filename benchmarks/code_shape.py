r"""The package's shape: file sizes, the import graph, and what loading a config costs.

  python benchmarks/code_shape.py [--root=.]

Prints:
- the line count of every module of `fognet_jax/` and the files over 500 lines;
- the package's internal import graph: its edges, any import cycle, and what `models/`
  imports from outside `models/`;
- the number of leaves of `configs/fogact.py`'s `get_config()`, and the third-party modules
  that loading the config file imports (run in a fresh interpreter).
"""

import argparse
import ast
import json
import pathlib
import subprocess
import sys

PACKAGE = 'fognet_jax'

_CONFIG_PROBE = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location('fogact_config', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
def leaves(d):
  return sum(leaves(v) if hasattr(v, 'items') else 1 for v in d.values())
heavy = sorted({name.split('.')[0] for name in sys.modules
                if name.split('.')[0] in ('jax', 'flax', 'orbax', 'tensorflow',
                                          'tensorflow_datasets', 'fognet_jax', 'numpy')})
print(json.dumps({'leaves': leaves(config), 'imports': heavy}))
"""


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def package_imports(path: pathlib.Path, root: pathlib.Path, modules: set[str]) -> set[str]:
  """The package's modules that `path` imports (absolute and relative imports)."""
  name = module_name(path, root)
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = '.'.join(anchor + ([base] if base else []))
      targets = [f'{base}.{alias.name}' for alias in node.names] + [base]
    else:
      continue
    for target in targets:
      while target and target not in modules:
        target = target.rpartition('.')[0]
      if target and target != name and target.startswith(PACKAGE):
        found.add(target)
  # `from fognet_jax import x` also names the package itself; keep only the most specific.
  return {t for t in found if not any(o != t and o.startswith(t + '.') for o in found)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every elementary cycle's node set, found by depth-first search (small graphs only)."""
  found = set()

  def visit(node, stack):
    for succ in graph.get(node, ()):
      if succ in stack:
        found.add(tuple(sorted(stack[stack.index(succ) :])))
      elif len(stack) < 50:
        visit(succ, stack + [succ])

  for start in graph:
    visit(start, [start])
  return [list(c) for c in sorted(found)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default='.', help='the project root')
  args = parser.parse_args()
  root = pathlib.Path(args.root).resolve()
  paths = sorted((root / PACKAGE).rglob('*.py'))
  modules = {module_name(p, root) for p in paths}
  sizes = {module_name(p, root): len(p.read_text().splitlines()) for p in paths}
  graph = {module_name(p, root): package_imports(p, root, modules) for p in paths}

  print(
    f'{len(paths)} modules, {sum(sizes.values())} lines; over 500 lines:',
    ', '.join(f'{m} ({n})' for m, n in sorted(sizes.items(), key=lambda x: -x[1]) if n > 500)
    or 'none',
  )
  print(
    'largest:', ', '.join(f'{m} ({n})' for m, n in sorted(sizes.items(), key=lambda x: -x[1])[:5])
  )
  edges = sum(len(v) for v in graph.values())
  print(f'import graph: {edges} edges; cycles:', cycles(graph) or 'none')
  models = f'{PACKAGE}.models'
  outside = {
    m: sorted(t for t in deps if not t.startswith(models))
    for m, deps in graph.items()
    if m.startswith(models)
  }
  print(
    'models/ imports from outside models/:', {m: d for m, d in outside.items() if d} or 'nothing'
  )
  probe = subprocess.run(
    [sys.executable, '-c', _CONFIG_PROBE, str(root / 'configs/fogact.py')],
    capture_output=True,
    text=True,
    cwd=root,
    check=True,
  )
  config = json.loads(probe.stdout.strip().splitlines()[-1])
  print(
    f'configs/fogact.py: {config["leaves"]} leaves; loading it imports:',
    ', '.join(config['imports']) or 'only the standard library and ml_collections',
  )


if __name__ == '__main__':
  main()
