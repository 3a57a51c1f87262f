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
import os
import tempfile

from absl import app, flags
from ml_collections import config_flags

from jaxembed import train
from jaxembed.errors import ConfigError
from jaxembed.train import centring
from jaxembed.train.merge import parse_ingredients, soup

_CONFIG = config_flags.DEFINE_config_file("config", "configs/minilm_wordnet_2d.py")
_INGREDIENTS = flags.DEFINE_list("ingredients", [], "<workdir or 'pretrained'>:<weight>")
_OUT = flags.DEFINE_string("out", "", "the JSON to write (default: print only)")


def main(argv):
  del argv
  ingredients = parse_ingredients(_INGREDIENTS.value)
  for path, _ in ingredients:
    if path != "pretrained" and not os.path.isdir(os.path.join(path, "checkpoints")):
      raise ConfigError(f"--ingredients: {path} is not a training workdir (no checkpoints/)")
  run = train.setup(_CONFIG.value, tempfile.mkdtemp(prefix="soup-"))
  params = soup(run, ingredients)
  if run.config.model.refresh_exits_at_end:
    # As training does after its last step: the exits' means of the model evaluated
    # (the soup's), not the average of its ingredients' means.
    params = centring.with_exit_centres(run, params)
  rows = train.evaluate(run, params, "soup")
  result = {"ingredients": [{"path": p, "weight": w} for p, w in ingredients],
            "rows": rows}
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=1)
  for row in rows:
    print(json.dumps(row))


if __name__ == "__main__":
  app.run(main)
