"""Weight averaging of runs (jaxembed.train.merge, used by experiments.soup_eval): the soup is the weighted sum of the
ingredients' parameters, checked against NumPy on restored checkpoints; bad
ingredient lists are refused with the flag named."""

import jax
import numpy as np
import pytest

from jaxembed import sharding as shd, train
from jaxembed.checkpoint import Checkpointer
from jaxembed.errors import ConfigError
from jaxembed.train.merge import parse_ingredients, soup


def test_the_soup_is_the_weighted_sum_of_its_ingredients(smoke_config, tmp_path):
  config = smoke_config(**{"train.steps": 3, "eval.before": False,
                           "train.checkpoint_every": 3, "optim.learning_rate": 1e-3})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  run = train.setup(config, str(tmp_path / "unused"))
  abstract, shardings = train.abstract_state(run)
  host = lambda tree: jax.tree.map(np.asarray, shd.local_value(tree))
  ckpt = Checkpointer(f"{workdir}/checkpoints", read_only=True)
  trained = host(ckpt.restore_params(abstract.params))
  ckpt.close()
  initial = host(train.new_state(run, shardings).params)
  got = host(soup(run, [(workdir, 0.25), ("pretrained", 0.75)]))
  want = jax.tree.map(lambda a, b: 0.25 * a + 0.75 * b, trained, initial)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7),
               got, want)
  # Training moved the weights, so the soup differs from either ingredient.
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), trained, initial))
  assert max(moved) > 1e-4
  rows = train.evaluate(run, soup(run, [(workdir, 0.5), ("pretrained", 0.5)]), "soup")
  assert {(r["layer"], r["dim"]) for r in rows} == {
      (l, d) for l in config.eval.layers for d in config.eval.dims}


@pytest.mark.parametrize("specs, match", [
    (["runs/a:0.5", "runs/b:0.4"], "must sum to 1"),
    (["runs/a"], "not <workdir or pretrained>:<weight>"),
    (["runs/a:-1", "pretrained:2"], "not <workdir"),
    ([], "must sum to 1")])
def test_bad_ingredients_are_refused(specs, match):
  with pytest.raises(ConfigError, match=match):
    parse_ingredients(specs)
