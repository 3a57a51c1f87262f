"""The train step with hard negatives in the batch and with the blockwise loss, on 1
and 8 devices."""

import jax
import numpy as np
import pytest

from jaxembed.errors import ConfigError
from jaxembed.losses.registry import LOSSES
from jaxembed import sharding as shd, train
from test_sharding import run_steps


def batch_with_negatives(run, b=16, k=2, t=16, seed=0):
  rng = np.random.default_rng(seed)
  def side(*shape):
    lengths = rng.integers(3, t + 1, size=shape)
    mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
    ids = rng.integers(1000, 5000, size=(*shape, t)).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask}
  return {"anchor": side(b), "positive": side(b), "negatives": side(b, k)}


def losses_with_negatives(config, devices, with_negatives=True):
  run = train.setup(config, "/nonexistent-unused", devices=devices)
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  step_fn = train.compile_train_step(run, shardings)
  out = []
  for seed in range(3):
    batch = batch_with_negatives(run, seed=seed)
    if not with_negatives:
      del batch["negatives"]
    state, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
    out.append(float(shd.local_value(metrics["loss"])))
  return np.array(out)


def test_hard_negatives_on_one_and_eight_devices(smoke_config):
  config = smoke_config()
  config.mesh.update(data=1, fsdp=1)
  single = losses_with_negatives(config, jax.devices()[:1])
  config.mesh.update(data=4, fsdp=2)
  sharded = losses_with_negatives(config, jax.devices())
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
  without = losses_with_negatives(config, jax.devices(), with_negatives=False)
  assert (single > without).all(), "more candidates make the loss larger"


def test_blockwise_loss_trains_like_the_plain_one(smoke_config):
  config = smoke_config()
  config.mesh.update(data=4, fsdp=2)
  _, _, plain = run_steps(config, jax.devices())
  config.loss.blockwise = True
  config.loss.blockwise_chunk = 3
  _, _, ring = run_steps(config, jax.devices())
  np.testing.assert_allclose(ring, plain, rtol=1e-5, atol=1e-5)


def test_blockwise_with_kl_is_refused(smoke_config):
  config = smoke_config(**{"loss.blockwise": True, "loss.kl_weight": 1.0})
  with pytest.raises(ConfigError, match="loss.blockwise=True works with .*kl_weight=1.0"):
    train.setup(config, "/nonexistent-unused")


@pytest.mark.parametrize("name, extra", [
    ("info_nce", {"loss.kl_weight": 0.5}),
    ("contrastive", {"loss.directions": ("qd", "dq", "qq", "dd"),
                     "loss.false_negative_margin": 0.1, "loss.focal_gamma": 1.0,
                     "loss.mix_negatives": 2, "loss.mix_hardest": 3}),
    ("sigmoid", {}),
    ("multi_positive_info_nce", {"loss.symmetric": True}),
    ("2dmse", {"loss.kl_weight": 1.0, "loss.kl_temperature": 0.3}),
    ("self_distillation", {"loss.matryoshka.layers": (1, 2)}),
])
def test_every_objective_trains_sharded_on_8_devices(smoke_config, name, extra):
  assert name in LOSSES
  config = smoke_config(**{"loss.name": name, **extra})
  config.mesh.update(data=4, fsdp=2)
  _, state, losses = run_steps(config, jax.devices(), n_steps=2)
  assert np.isfinite(losses).all() and int(shd.local_value(state.step)) == 2


@pytest.mark.parametrize("overrides, match", [
    ({"loss.name": "triplet"}, r"loss.name='triplet'; valid values: \['info_nce', "
                               r"'contrastive', 'sigmoid', 'multi_positive_info_nce', "
                               r"'2dmse', 'cosent', 'angle', "
                               r"'self_distillation', 'maxsim'\]"),
    ({"loss.matryoshka.weights": (1.0, 2.0)}, r"weights has 2 entries for 6 cells"),
    ({"loss.matryoshka.dims": (8, 48)}, r"loss.matryoshka.dims: dim 48 is out of range "
                                        r"for the hidden size 32 \(valid: 1..32\)"),
    ({"loss.name": "contrastive", "loss.directions": ("qd", "up")},
     r"\['up'\] not valid; valid values: \['qd', 'dq', 'qq', 'dd'\]"),
    ({"loss.matryoshka.layer_weighting": "cubic"}, r"valid values: \['uniform', 'linear', "
                                                   r"'log'\]"),
])
def test_bad_loss_config_fails_at_config_time(smoke_config, overrides, match):
  with pytest.raises(ConfigError, match=match):
    train.setup(smoke_config(**overrides), "/nonexistent-unused")


@pytest.mark.parametrize("name", ["info_nce", "sigmoid"])
def test_learnable_temperature_trains_on_one_and_eight_devices(smoke_config, name):
  config = smoke_config(**{"loss.name": name, "loss.learnable_temperature": True,
                           "optim.learning_rate": 5e-2})
  config.mesh.update(data=1, fsdp=1)
  _, single_state, single = run_steps(config, jax.devices()[:1])
  config.mesh.update(data=4, fsdp=2)
  _, state, sharded = run_steps(config, jax.devices())
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
  learned = float(shd.local_value(state.params["loss"]["log_scale"]))
  start = np.log(config.loss.sigmoid_scale if name == "sigmoid" else config.loss.scale)
  assert abs(learned - start) > 1e-3, "the temperature should move"
  assert learned == pytest.approx(
      float(shd.local_value(single_state.params["loss"]["log_scale"])), abs=1e-5)


def test_learnable_temperature_with_grad_cache(smoke_config):
  """GradCache must also carry the loss's own gradient (the temperature's)."""
  config = smoke_config(**{"loss.learnable_temperature": True, "train.dropout": False,
                           "optim.learning_rate": 5e-2})
  _, plain_state, plain = run_steps(config, jax.devices())
  config.train.grad_cache_minibatch = 8
  _, cached_state, cached = run_steps(config, jax.devices())
  np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-5)
  assert float(shd.local_value(cached_state.params["loss"]["log_scale"])) == pytest.approx(
      float(shd.local_value(plain_state.params["loss"]["log_scale"])), abs=1e-5)


def test_learnable_temperature_refused_where_unsupported(smoke_config):
  config = smoke_config(**{"loss.name": "2dmse", "loss.learnable_temperature": True})
  with pytest.raises(ConfigError, match=r"needs loss.name in \['info_nce', 'contrastive', "
                                        r"'sigmoid', 'multi_positive_info_nce'\], "
                                        r"not '2dmse'"):
    train.setup(config, "/nonexistent-unused")


def _steps_of(run, n_steps=3):
  """(losses, final params, compiled FLOPs) of n steps of `run` from its initial state."""
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  step_fn = train.compile_train_step(run, shardings)
  data = iter(run.dataset)
  batch = shd.host_batch_to_global(run.mesh, next(data))
  cost = step_fn.lower(state, batch).compile().cost_analysis()
  flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  losses = []
  for _ in range(n_steps):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
    batch = shd.host_batch_to_global(run.mesh, next(data))
  return np.array(losses), jax.device_get(state.params), flops


def test_a_shallow_cell_computes_only_its_blocks(smoke_config):
  """A loss reading layer 1 alone of the 2-layer smoke model (a separately trained
  sub-model): the step stops after block 1 (fewer FLOPs) and trains exactly as the
  full forward does (same losses, same weights); block 2 gets no gradient."""
  import dataclasses
  config = smoke_config(**{"loss.matryoshka.mode": "pairs",
                           "loss.matryoshka.pairs": ((1, 16),)})
  config.mesh.update(data=1, fsdp=1)
  run = train.setup(config, "/nonexistent-unused", devices=jax.devices()[:1])
  assert run.train_depth == 1 and run.train_model.early_exit
  full = dataclasses.replace(run, train_depth=0)
  assert full.train_model is run.model
  early_losses, early_params, early_flops = _steps_of(run)
  full_losses, full_params, full_flops = _steps_of(full)
  np.testing.assert_allclose(early_losses, full_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               early_params, full_params)
  assert early_flops < 0.8 * full_flops
  # A cell at the last layer, a KL to the full model, or 2DMSE read the whole encoder.
  for overrides in ({"loss.matryoshka.pairs": ((1, 16), (2, 32))},
                    {"loss.kl_weight": 1.0}, {"loss.name": "2dmse"}):
    c = smoke_config(**{"loss.matryoshka.mode": "pairs",
                        "loss.matryoshka.pairs": ((1, 16),), **overrides})
    c.mesh.update(data=1, fsdp=1)
    assert train.setup(c, "/nonexistent-unused", devices=jax.devices()[:1]).train_depth == 2
