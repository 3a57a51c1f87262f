"""Every config file imports, passes the field check, and builds its model's shapes
with jax.eval_shape (so a config cannot rot unnoticed)."""

import glob
import importlib
import os

import jax
import pytest

from conftest import REPO, require_weights
from jaxembed.models import read_model_folder
from jaxembed import defaults
from jaxembed.models import build
from jaxembed.train import stages

# The configs live in the package (jaxembed/configs: an installed wheel has them); the
# repository's configs/*.py wrap them.
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "jaxembed", "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "common.py"))
CASES = [(path, arg) for path in CONFIG_FILES
         for arg in (None, "smoke", *getattr(importlib.import_module(
             f"jaxembed.configs.{os.path.basename(path)[:-3]}"), "VARIANTS", ()))]


@pytest.mark.parametrize("path, arg", CASES,
                         ids=[f"{os.path.basename(p)}:{a}" for p, a in CASES])
def test_config_builds(path, arg):
  module = importlib.import_module(f"jaxembed.configs.{os.path.basename(path)[:-3]}")
  if getattr(module, "KIND", "") == "classification":
    return _classifier_config_builds(module, arg)
  if getattr(module, "KIND", "") == "free_embedding":
    return _free_embedding_config_builds(module, arg)
  assert module.__doc__ and "python -m experiments.train" in module.__doc__
  config = module.get_config(arg)
  defaults.check_fields(config)
  for stage in stages.plan(config, "/workdir"):     # each stage of a staged recipe
    defaults.check_fields(stage.config)
  folder = read_model_folder(require_weights(config.model.path))
  text_config = build.text_encoder_config(config, folder)
  shapes = build.abstract_params(build.build_model(config, text_config, folder))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert n > 0
  if arg is None and config.model.path == defaults.base_config().model.path:
    # the real all-MiniLM-L6-v2 (22.7M parameters), and a multi-vector model's
    # projection per layer (6 x 384 x 128)
    extra = 6 * 384 * config.model.multivector.dim
    assert 22.5e6 < n - extra < 23e6
  if arg is None and config.model.path.endswith(".gguf"):
    assert 130e6 < n < 140e6   # the real SmolLM2-135M


def test_each_repository_config_wraps_its_packaged_config():
  """configs/<name>.py gives the packaged config's functions and names, one for one."""
  packaged = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "jaxembed", "configs",
                                                                  "*.py"))}
  wrappers = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))}
  assert packaged == wrappers
  for name in sorted(packaged - {"__init__.py"}):
    inner = importlib.import_module(f"jaxembed.configs.{name[:-3]}")
    outer = importlib.import_module(f"configs.{name[:-3]}")
    public = {k: v for k, v in vars(inner).items() if not k.startswith("_")}
    assert public and all(getattr(outer, k) is v for k, v in public.items()), name


def test_unknown_config_argument():
  from configs import minilm_wordnet_2d
  with pytest.raises(ValueError, match="'smokey' is not known"):
    minilm_wordnet_2d.get_config("smokey")


def test_misspelt_field_in_a_config_file_is_refused():
  from configs import minilm_wordnet_2d
  from jaxembed.errors import ConfigError
  config = minilm_wordnet_2d.get_config("smoke")
  config.train.stpes = 3
  with pytest.raises(ConfigError, match=r"unknown config field 'train.stpes'.*'steps'"):
    defaults.check_fields(config)


def _classifier_config_builds(module, arg):
  """A supervised reproduction config (e.g. MRL's): every arm's classifier builds."""
  from jaxembed.train import classify
  name = module.__name__.split(".")[-1]
  assert module.__doc__ and f"python -m experiments.{name}" in module.__doc__
  config = module.get_config(arg)
  assert config.arms
  for arm in config.arms:
    model = classify.make_classifier(config, arm)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               *model.example_inputs()))
    assert sum(x.size for x in jax.tree.leaves(shapes)) > 0


def _free_embedding_config_builds(module, arg):
  """LIMIT's search config: every dimension's first trial (at the paper's fit, the
  largest n the search starts from) lowers on all devices, from shapes alone."""
  from math import comb
  from jaxembed import sharding as shd
  from jaxembed.train import free_embedding as fe
  assert module.__doc__ and "python -m experiments.limit_free_embedding" in module.__doc__
  config = module.get_config(arg)
  assert config.seeds >= 1 and all(int(d) >= 1 for d in config.dims)
  mesh = shd.make_mesh({"data": -1})
  shards = shd.batch_shards(mesh)
  for d in config.dims:
    search = fe.Search(int(d), mesh=mesh)
    n = max(3, round(fe.paper_fit(d)))
    nq = comb(n, 2) + (-comb(n, 2) % shards)
    text = search.lower(n).as_text()
    # The relevance matrix at full size, the program partitioned over every device.
    assert f"tensor<{nq}x{n}xf32>" in text and f"num_partitions = {shards}" in text
