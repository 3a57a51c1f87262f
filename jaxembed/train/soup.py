"""Weight averaging of runs (a model soup; with the pretrained weights as one
ingredient, WiSE-FT, Wortsman et al. 2022): the weighted sum of runs' parameters, laid
out as a run's state. `experiments/soup_eval.py` evaluates it."""

from __future__ import annotations

import math
import os

import jax

from jaxembed.checkpoint import Checkpointer
from jaxembed.errors import ConfigError
from jaxembed.train.state import abstract_state, new_state


def parse_ingredients(specs) -> list[tuple[str, float]]:
  """['runs/a:0.5', 'pretrained:0.5'] -> [('runs/a', 0.5), ('pretrained', 0.5)]; the
  weights must be >= 0 and sum to 1."""
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
  abstract, shardings = abstract_state(run)
  total = None
  for path, w in ingredients:
    if path == "pretrained":
      params = new_state(run, shardings).params
    else:
      ckpt = Checkpointer(os.path.join(path, "checkpoints"), read_only=True)
      params = ckpt.restore_params(abstract.params)
      ckpt.close()
    scaled = jax.tree.map(lambda x: w * x, params)
    total = scaled if total is None else jax.tree.map(lambda a, b: a + b, total, scaled)
  return total
