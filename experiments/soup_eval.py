r"""Evaluates a weighted average of trained runs' weights (a model soup; with the
pretrained model as one ingredient, WiSE-FT) on a run config's evaluation grid.

  python -m experiments.soup_eval --config=configs/minilm_wordnet_2d.py \
      --ingredients=runs/a:0.5,runs/b:0.5 --out=runs/soup_ab.json

Each ingredient is a training workdir (its latest checkpoint) or `pretrained` (the
config's initial weights: model.path's for a pretrained model) with a weight; the weights must sum to 1. All
ingredients must have the config's parameter shapes (runs fine-tuned from one start).
Writes {"ingredients": ..., "rows": [one row per (layer, dim) cell]} to --out.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxembed import train
from jaxembed.checkpoint import Checkpointer
from jaxembed.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/minilm_wordnet_2d.py")
_INGREDIENTS = flags.DEFINE_list("ingredients", [], "<workdir or 'pretrained'>:<weight>")
_OUT = flags.DEFINE_string("out", "", "the JSON to write (default: print only)")


def parse_ingredients(specs) -> list[tuple[str, float]]:
  out = []
  for spec in specs:
    path, sep, weight = spec.rpartition(":")
    try:
      w = float(weight)
    except ValueError:
      w = float("nan")
    if not sep or not path or not math.isfinite(w) or w < 0:
      raise ConfigError(f"--ingredients: {spec!r} is not <workdir or pretrained>:<weight>")
    out.append((path, w))
  if not out or abs(sum(w for _, w in out) - 1.0) > 1e-6:
    raise ConfigError(f"--ingredients: weights {[w for _, w in out]} must sum to 1")
  return out


def soup(run, ingredients):
  """The weighted sum of the ingredients' parameters, laid out as the run's state."""
  abstract, shardings = train.abstract_state(run)
  total = None
  for path, w in ingredients:
    if path == "pretrained":
      params = train.new_state(run, shardings).params
    else:
      ckpt = Checkpointer(os.path.join(path, "checkpoints"), read_only=True)
      params = ckpt.restore_params(abstract.params)
      ckpt.close()
    scaled = jax.tree.map(lambda x: w * x, params)
    total = scaled if total is None else jax.tree.map(lambda a, b: a + b, total, scaled)
  return total


def main(argv):
  del argv
  ingredients = parse_ingredients(_INGREDIENTS.value)
  for path, _ in ingredients:
    if path != "pretrained" and not os.path.isdir(os.path.join(path, "checkpoints")):
      raise ConfigError(f"--ingredients: {path} is not a training workdir (no checkpoints/)")
  run = train.setup(_CONFIG.value, tempfile.mkdtemp(prefix="soup-"))
  rows = train.evaluate(run, soup(run, ingredients), "soup")
  result = {"ingredients": [{"path": p, "weight": w} for p, w in ingredients],
            "rows": rows}
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=1)
  for row in rows:
    print(json.dumps(row))


if __name__ == "__main__":
  app.run(main)
