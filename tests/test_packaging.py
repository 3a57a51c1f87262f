"""Licence, version and provenance: what a user (or a paper's appendix) needs to say
which jaxembed made a result."""

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata

import jaxembed
from conftest import REPO
from jaxembed import version


def test_licence_is_spdx_and_shipped():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  assert project["license"] == "Apache-2.0"
  assert project["license-files"] == ["LICENSE"]
  with open(os.path.join(REPO, "LICENSE")) as f:
    text = f.read()
  assert "Apache License" in text and "Version 2.0" in text


def test_version_is_the_installed_distributions():
  assert jaxembed.__version__ == metadata.version("jaxembed")


def test_a_workdir_records_version_and_commit(smoke_config, tmp_path):
  from jaxembed import train
  config = smoke_config(**{"train.steps": 2, "eval.before": False,
                           "train.checkpoint_every": 2})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "version.json") as f:
    recorded = json.load(f)
  assert recorded["jaxembed"] == metadata.version("jaxembed")
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                        text=True)
  if head.returncode == 0 and version.git_commit() is not None:
    assert recorded["commit"].split("-")[0] == head.stdout.strip()
  else:  # not run from a checkout: nothing is made up
    assert recorded["commit"] is None


def test_warmup_longer_than_the_run_is_clamped_with_a_warning(caplog):
  import ml_collections
  import numpy as np
  from jaxembed import defaults
  from jaxembed.train.optim import make_schedule
  cfg = defaults.base_config().optim      # warmup 40
  with caplog.at_level("WARNING"):
    schedule = make_schedule(cfg, 4)
  assert "optim.warmup_steps=40 is more than train.steps=4" in caplog.text
  # Linear warmup over the 4 steps, as if warmup_steps were 4 (no decay left).
  clamped = ml_collections.ConfigDict(cfg.to_dict())
  clamped.warmup_steps = 4
  want = make_schedule(clamped, 4)
  np.testing.assert_allclose([float(schedule(i)) for i in range(5)],
                             [float(want(i)) for i in range(5)])
  np.testing.assert_allclose(float(schedule(2)), cfg.learning_rate * 2 / 4, rtol=1e-6)


WITHOUT_EXTRAS = r"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {"gensim", "matplotlib", "onnx", "mteb", "faiss", "sklearn", "torch",
           "sentence_transformers", "transformers", "tensorboard"}

class NotInstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return None

sys.meta_path.insert(0, NotInstalled())
import jaxembed
from jaxembed.errors import DataError, ModelLoadError
for m in pkgutil.walk_packages(jaxembed.__path__, "jaxembed."):
  importlib.import_module(m.name)
print("encoded", jaxembed.load(sys.argv[1]).encode(["a dog runs"], layer=2).shape)
from jaxembed.data import packaged
try:
  packaged.load_simlex()
except DataError as e:
  print("simlex:", e)
from jaxembed.evals import grid
try:
  grid.heatmaps(None, [{"layer": 1, "dim": 8, "x/y": 0.5}])
except ImportError:
  print("heatmap: ImportError")
try:
  jaxembed.load("model.onnx", tokenizer=sys.argv[1] + "/tokenizer.json")
except ModelLoadError as e:
  print("onnx:", e)
"""


def test_core_works_without_the_optional_extras(tmp_path):
  """Every module imports and a model loads and encodes without gensim, matplotlib,
  onnx, mteb, faiss, scikit-learn or torch; what needs them says which extra to
  install."""
  from conftest import MINILM
  from jaxembed.models import read_model_folder
  folder = os.path.dirname(read_model_folder(MINILM).tokenizer)
  (tmp_path / "model.onnx").write_bytes(b"not read")
  done = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, folder], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": REPO})
  assert done.returncode == 0, done.stderr[-3000:]
  assert "encoded (1, 384)" in done.stdout
  assert "simlex: gensim is not installed" in done.stdout and "jaxembed[eval]" in done.stdout
  assert "heatmap: ImportError" in done.stdout
  assert "onnx: reading ONNX weights needs the onnx package: pip install 'jaxembed[onnx]'" \
      in done.stdout
  meta = metadata.metadata("jaxembed")
  required = [r for r in (meta.get_all("Requires-Dist") or []) if "extra ==" not in r]
  assert not [r for r in required if r.split("=")[0].split(">")[0].strip().lower()
              in ("gensim", "matplotlib", "onnx")], required
