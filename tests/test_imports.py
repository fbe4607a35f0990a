"""The modules of `d2e2s_jax` import each other one way: the import graph has no cycle.

Every import counts, at module level and inside functions alike (an import moved into a
function hides a cycle from Python but not from the layering), so a module that needs
another never has a reverse dependency to work around.
"""

import ast
import pathlib
from typing import Dict, List, Optional, Set

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "d2e2s_jax"


def module_files(package_dir: pathlib.Path = PACKAGE_DIR) -> Dict[str, pathlib.Path]:
  """{dotted module name: file} of every module of the package (packages by __init__)."""
  files = {}
  for path in sorted(package_dir.rglob("*.py")):
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    files[".".join(parts)] = path
  return files


def _resolve(name: str, modules: Set[str]) -> Optional[str]:
  """The package module that `name` (a module, or a name inside one) refers to."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def imported_modules(module: str, path: pathlib.Path, modules: Set[str]) -> Set[str]:
  """The package modules that `module` imports anywhere in its source."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from package import module` names a module; `from module import name` does not.
      targets = [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    for target in targets:
      resolved = _resolve(target, modules)
      if resolved is not None and resolved != module:
        found.add(resolved)
  return found


def import_graph(package_dir: pathlib.Path = PACKAGE_DIR) -> Dict[str, Set[str]]:
  files = module_files(package_dir)
  modules = set(files)
  return {module: imported_modules(module, path, modules) for module, path in files.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """One cycle of `graph` as [a, b, ..., a], or None when it is acyclic."""
  state: Dict[str, int] = {}  # 1 on the current path, 2 done
  path: List[str] = []

  def visit(node: str) -> Optional[List[str]]:
    state[node] = 1
    path.append(node)
    for successor in sorted(graph.get(node, ())):
      if state.get(successor) == 1:
        return path[path.index(successor):] + [successor]
      if successor not in state:
        cycle = visit(successor)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert "d2e2s_jax.models.d2e2s" in graph and "d2e2s_jax.data.examples" in graph
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_level_and_relative_imports_are_edges(tmp_path):
  package = tmp_path / "d2e2s_jax"
  (package / "models").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "models" / "__init__.py").write_text("")
  (package / "models" / "low.py").write_text("def f():\n  from d2e2s_jax.models import high\n")
  (package / "models" / "high.py").write_text("from .low import f\nimport numpy\n")
  graph = import_graph(package)
  assert graph["d2e2s_jax.models.low"] == {"d2e2s_jax.models.high"}
  assert graph["d2e2s_jax.models.high"] == {"d2e2s_jax.models.low"}
  assert find_cycle(graph) == ["d2e2s_jax.models.high", "d2e2s_jax.models.low", "d2e2s_jax.models.high"]


def test_find_cycle_on_an_acyclic_graph():
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
