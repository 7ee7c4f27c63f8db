"""The package's layers: every rso_jax module imports only from layers below its own or its
own layer, no import cycle (imports inside functions and a subpackage's `__init__` count), and
no rso_jax import inside a function."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rso_jax")

# Bottom to top. A module not listed here fails `test_every_module_has_a_layer`.
LAYERS = [
    # base: files, errors, meshes, run-directory conventions, the sampling recipe
    {"rso_jax", "rso_jax.fs", "rso_jax.errors", "rso_jax.partitioning", "rso_jax.textfiles",
     "rso_jax.runs", "rso_jax.run_lock", "rso_jax.recipe", "rso_jax.kernels",
     "rso_jax.checkpoint_files", "rso_jax.progress"},
    # pure array code
    {"rso_jax.network", "rso_jax.decoder_network", "rso_jax.networks", "rso_jax.hf_decoder",
     "rso_jax.decoding", "rso_jax.losses", "rso_jax.rejection", "rso_jax.pairs",
     "rso_jax.win_rates"},
    # text formats and vocabularies the models read
    {"rso_jax.tasks.vocab", "rso_jax.tasks.preprocessors", "rso_jax.tasks.text_formats",
     "rso_jax.feature_converters", "rso_jax.tasks.golden", "rso_jax.tasks.oracle"},
    # checkpoints, models
    {"rso_jax.checkpoints"},
    {"rso_jax.models", "rso_jax.reward_models"},
    # the inference layer (a checkpoint on a mesh), the training engine
    {"rso_jax.inference", "rso_jax.trainer"},
    # seqio tasks
    {"rso_jax.tasks", "rso_jax.tasks.*", "rso_jax.datasets"},
    # the gin command line
    {"rso_jax.cli"},
    # stages and their entry points
    {"rso_jax.train", "rso_jax.sample", "rso_jax.evaluate", "rso_jax.reports", "rso_jax.infer",
     "rso_jax.collect", "rso_jax.sample_batch", "rso_jax.reward_quality", "rso_jax.t5x_models", "rso_jax.convert", "rso_jax.export",
     "rso_jax.oracle_reward"},
    # the experiment's stage graph
    {"rso_jax.pipeline"},
]


def _modules():
  mods = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        mods[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return mods


MODULES = _modules()


def _layer(mod):
  for i, layer in enumerate(LAYERS):
    if mod in layer or any(p.endswith(".*") and mod.startswith(p[:-1]) for p in layer):
      return i
  return None


class _Imports(ast.NodeVisitor):
  """(target module, inside a function?) of every rso_jax import of one module."""

  def __init__(self, mod, is_package):
    self.mod, self.out, self.depth = mod, [], 0
    self.package = mod if is_package else mod.rsplit(".", 1)[0]

  def visit_FunctionDef(self, node):
    self.depth += 1
    self.generic_visit(node)
    self.depth -= 1

  visit_AsyncFunctionDef = visit_FunctionDef

  def visit_If(self, node):
    # `if __name__ == "__main__": from rso_jax import <itself>` runs the package module's main
    test = node.test
    if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"):
      return
    self.generic_visit(node)

  def _add(self, target):
    for t in (target, target.rsplit(".", 1)[0]):
      if t in MODULES:
        self.out.append((t, self.depth > 0))
        return

  def visit_Import(self, node):
    for a in node.names:
      if a.name.startswith("rso_jax"):
        self._add(a.name)

  def visit_ImportFrom(self, node):
    if node.level:
      base = self.package.split(".")[:len(self.package.split(".")) - node.level + 1]
      mod = ".".join(base + ([node.module] if node.module else []))
    else:
      mod = node.module or ""
    if mod.startswith("rso_jax"):
      for a in node.names:
        self._add(f"{mod}.{a.name}")


def _imports(mod):
  path = MODULES[mod]
  v = _Imports(mod, path.endswith("__init__.py"))
  with open(path, encoding="utf-8") as f:
    v.visit(ast.parse(f.read(), path))
  return v.out


def _graph():
  """module -> the modules importing it runs: its imports, and their parent packages (importing
  `rso_jax.tasks.vocab` runs `rso_jax/tasks/__init__.py` first) other than its own."""
  edges = {}
  for mod in MODULES:
    parts = mod.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    targets = set()
    for t, _ in _imports(mod):
      parts = t.split(".")
      targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    edges[mod] = targets - own
  return edges


def test_every_module_has_a_layer():
  assert [m for m in sorted(MODULES) if _layer(m) is None] == []


def test_no_rso_jax_import_inside_a_function():
  """An import inside a function is for an optional heavy dependency, never for rso_jax."""
  found = [f"{m} -> {t}" for m in sorted(MODULES) for t, inside in _imports(m) if inside]
  assert found == []


def test_imports_go_down_the_layers():
  up = [f"{m} (layer {_layer(m)}) -> {t} (layer {_layer(t)})"
        for m in sorted(MODULES) for t, _ in _imports(m)
        if t != m and None not in (_layer(m), _layer(t)) and _layer(t) > _layer(m)]
  assert up == []


def test_no_import_cycle():
  edges = _graph()
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      scc = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        scc.append(w)
        if w == v:
          break
      if len(scc) > 1:
        cycles.append(sorted(scc))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  assert cycles == []


@pytest.mark.parametrize("bad", [("rso_jax.fs", "rso_jax.pipeline")])
def test_a_cycle_would_be_found(bad, monkeypatch):
  """The cycle check sees an edge that closes a loop (pipeline imports fs, fs imports pipeline)."""
  real = _imports
  monkeypatch.setitem(globals(), "_imports",
                      lambda m: real(m) + ([(bad[1], True)] if m == bad[0] else []))
  with pytest.raises(AssertionError):
    test_no_import_cycle()


def test_no_test_module_imports_another():
  """Tests share fixtures through conftest.py and helper modules, never another test module."""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  found = []
  for f in sorted(os.listdir(tests_dir)):
    if f.startswith("test_") and f.endswith(".py"):
      with open(os.path.join(tests_dir, f), encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), f)
      for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{f} -> {n}" for n in names if n.split(".")[-1].startswith("test_")]
  assert found == []
