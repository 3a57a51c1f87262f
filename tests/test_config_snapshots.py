"""The config files build the runs they built before the default config became plain
assignments and its recipe lineage the ablation's arms (configs/ood_ablation.py):
every configuration equals its snapshot (tests/fixtures/make_config_snapshots.py,
taken at the commit before that change), so the committed results tables stay
reproducible from the new files."""

import copy
import importlib
import json
import logging
import os

import pytest

from conftest import REPO
from jaxembed import defaults

with open(os.path.join(REPO, "tests", "fixtures", "config_snapshots.json")) as f:
  SNAPSHOTS = json.load(f)["configs"]

# New name -> snapshot name: the default config's lineage recipes moved to
# ood_ablation's arm=; "smoke" of the default config now runs the default recipe.
RECIPES = ("exact_teacher", "loose_anchor", "split_teacher", "refreshed", "free_words",
           "distill_centred", "distill", "pairs", "distill_only")
MOVED = {
    "minilm_wordnet_2d:": "minilm_wordnet_2d:",
    "minilm_wordnet_2d:smoke": "minilm_wordnet_2d:smoke,recipe=exact_teacher",
    "ood_ablation:": "minilm_wordnet_2d:",
    **{f"ood_ablation:arm={r}": f"minilm_wordnet_2d:recipe={r}" for r in RECIPES},
    **{f"ood_ablation:smoke,arm={r}": f"minilm_wordnet_2d:smoke,recipe={r}"
       for r in RECIPES},
}
# Deliberate differences, each a smoke (test) config: the smoke model used to override
# split_teacher's batch of 64 with its own 16; the arm now keeps its batch.
CHANGED = {"ood_ablation:smoke,arm=split_teacher": {"train.batch_size": (16, 64)}}
# Sections added to the defaults after the snapshot; a config that leaves them at
# their default builds the run it built before.
ADDED = ("model.multivector", "eval.split", "eval.split_seed", "loss.exit_teacher",
         "loss.distill.teacher", "data.size_temperature", "loss.distill.anchor_map",
         "loss.distill.anchor_map_texts")


def _build(key):
  name, arg = key.split(":", 1)
  module = importlib.import_module(f"configs.{name}")
  return json.loads(module.get_config(arg or None).to_json_best_effort())


# Old smoke configs of the pair loss with a variant: the smoke now runs the default
# recipe, which had no smoke variant snapshot.
NO_SNAPSHOT = {"minilm_wordnet_2d:smoke,variant=starbucks"}


def _cases():
  cases = dict(MOVED)
  for key in SNAPSHOTS:
    if "recipe=" not in key and key not in cases and key not in NO_SNAPSHOT:
      cases[key] = key
  return sorted(cases.items())


@pytest.mark.parametrize("new, old", _cases(), ids=[n for n, _ in _cases()])
def test_the_config_builds_its_snapshot(new, old):
  # The snapshot spells model.centered_exits / centering_texts as they were then.
  got, want = _build(new), defaults.migrate(copy.deepcopy(SNAPSHOTS[old]))
  for path, (before, after) in CHANGED.get(new, {}).items():
    node_got, node_want = got, want
    *parents, leaf = path.split(".")
    for p in parents:
      node_got, node_want = node_got[p], node_want[p]
    assert (node_want[leaf], node_got[leaf]) == (before, after)
    node_got[leaf] = node_want[leaf]
  # model.dtype became 'auto' (the hardware's faster matmul) where configs said
  # bfloat16 or left the folder's float32, and 'float32' in the smoke model.
  if got["model"].get("dtype") != want["model"].get("dtype"):
    assert want["model"].get("dtype") in ("", "bfloat16"), want["model"].get("dtype")
    assert got["model"]["dtype"] in ("auto", "float32")
    got["model"]["dtype"] = want["model"]["dtype"]
  base = json.loads(defaults.base_config().to_json_best_effort())
  for path in ADDED:
    *parents, leaf = path.split(".")
    node_got, node_want, node_base = got, want, base
    for p in parents:
      node_got, node_want, node_base = node_got[p], node_want[p], node_base[p]
    if leaf not in node_want and leaf in node_got:
      assert node_got[leaf] == node_base[leaf], path
      del node_got[leaf]
  assert got == want


def test_every_lineage_recipe_has_an_arm():
  from configs import ood_ablation
  assert set(ood_ablation.ARMS) == set(RECIPES)


def test_renamed_fields_still_load_with_a_warning(caplog):
  """A config file, a saved config.json or a saved model spec that uses a field's old
  name loads under the new one, with a warning naming it."""
  from jaxembed.models import spec as model_spec
  c = defaults.base_config()
  c.model.centered_exits = True                  # an old config file's assignment
  c.model.centering_texts = 512
  with caplog.at_level(logging.WARNING):
    defaults.migrate(c)
  defaults.check_fields(c)
  assert c.model.centred_exits is True and c.model.centring_texts == 512
  assert "model.centred_exits" in caplog.text and "model.centring_texts" in caplog.text
  saved = {"model": {"centered_exits": True}}   # a workdir's config.json
  assert defaults.migrate(saved) == {"model": {"centred_exits": True}}
  old = json.loads(model_spec.ModelSpec(encoder=_bert()).to_json())
  old["centered_exits"] = old.pop("centred_exits") or True
  assert model_spec.ModelSpec.from_dict(old).centred_exits is True


def _bert():
  from jaxembed.models.bert import BertConfig
  return BertConfig(vocab_size=8, hidden_size=4, num_layers=1, num_heads=1,
                    intermediate_size=8)
