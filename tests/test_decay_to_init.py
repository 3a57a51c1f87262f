"""optim.decay_to_init: AdamW whose decoupled decay pulls toward the starting weights
(L2-SP). Checked against a float64 NumPy AdamW written out by hand, and in the real
train step (sharded state, donated buffers)."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxembed import defaults
from jaxembed.errors import ConfigError
from jaxembed.train.optim import DecayToInitState, make_optimizer
from test_freezing import compiled, flat


def optim_config(**overrides):
  c = ml_collections.ConfigDict(defaults.base_config().optim.to_dict())
  c.update(schedule="constant", warmup_steps=0, grad_clip=0.0, learning_rate=1e-2,
           **overrides)
  return c


def numpy_adamw_to_init(params, grads, *, lr, b1, b2, eps, wd, rate):
  """AdamW (bias-corrected moments, decoupled decay) plus rate * (w - w_0), float64."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  p0 = {k: v.copy() for k, v in p.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t, g in enumerate(grads, 1):
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
      mhat, vhat = m[k] / (1 - b1 ** t), v2[k] / (1 - b2 ** t)
      u = mhat / (np.sqrt(vhat) + eps) + wd * p[k] + rate * (p[k] - p0[k])
      p[k] = p[k] - lr * u
  return p


@pytest.mark.parametrize("rate", [0.0, 30.0])
def test_the_update_matches_numpy(rate):
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(5, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  # Gradients that first push the weights away, then vanish: the pull must bring them
  # part of the way back (and, with rate 0, Adam's momentum alone moves them on).
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(4)] + [{k: np.zeros_like(v) for k, v in params.items()}] * 6
  cfg = optim_config(decay_to_init=rate)
  tx, _ = make_optimizer(cfg, total_steps=10)
  state = tx.init(jax.tree.map(np.asarray, params))
  p = jax.tree.map(np.asarray, params)
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, b: np.asarray(a + b), p, updates)
  want = numpy_adamw_to_init(params, grads, lr=cfg.learning_rate, b1=cfg.b1, b2=cfg.b2,
                             eps=cfg.eps, wd=cfg.weight_decay, rate=rate)
  for k in params:
    np.testing.assert_allclose(p[k], want[k], rtol=2e-5, atol=2e-6)
  # The pull is visible: with it the weights end nearer the start than without.
  if rate:
    free = numpy_adamw_to_init(params, grads, lr=cfg.learning_rate, b1=cfg.b1, b2=cfg.b2,
                               eps=cfg.eps, wd=cfg.weight_decay, rate=0.0)
    dist = lambda q: sum(np.sum((q[k] - params[k]) ** 2) for k in params)
    assert dist(p) < 0.5 * dist(free)


def test_it_needs_adamw():
  with pytest.raises(ConfigError, match="optim.decay_to_init=1.0 needs optim.name='adamw'"):
    make_optimizer(optim_config(decay_to_init=1.0, name="sgd"), total_steps=10)
  with pytest.raises(ConfigError, match="optim.decay_to_init=-1"):
    make_optimizer(optim_config(decay_to_init=-1.0), total_steps=10)


def test_the_train_step_keeps_its_own_copy_of_the_start(smoke_config):
  config = smoke_config(**{"optim.decay_to_init": 1e3, "optim.learning_rate": 1e-3,
                           "optim.warmup_steps": 0, "train.dropout": False})
  config.mesh.update(data=4, fsdp=2)
  _, state, step_fn, batch = compiled(config)
  start = flat(state.params)
  for _ in range(3):                       # the state is donated at every step
    state, _ = step_fn(state, batch)
  held = [x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(
      x, DecayToInitState)) if isinstance(x, DecayToInitState)]
  assert len(held) == 1
  kept = flat(held[0].init)
  assert kept.keys() == start.keys()
  for key, value in start.items():
    np.testing.assert_array_equal(kept[key], value, err_msg=key)
  # Laid out like the parameters it copies (fsdp shards included).
  assert jax.tree.map(lambda x: x.sharding, held[0].init) == jax.tree.map(
      lambda x: x.sharding, state.params)
  now = flat(state.params)
  moved = sum(not np.array_equal(now[k], start[k]) for k in start)
  assert moved > len(start) // 2
