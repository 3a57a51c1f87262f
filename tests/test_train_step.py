"""The train step with hard negatives in the batch and with the blockwise loss, on 1
and 8 devices."""

import jax
import numpy as np

from jaxembed.train import loop
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
  run = loop.setup(config, "/nonexistent-unused", devices=devices)
  _, shardings = loop.abstract_state(run)
  state = loop.new_state(run, shardings)
  step_fn = loop.compile_train_step(run, shardings)
  out = []
  for seed in range(3):
    batch = batch_with_negatives(run, seed=seed)
    if not with_negatives:
      del batch["negatives"]
    with loop.mesh_context(run):
      state, metrics = step_fn(state, loop.global_batch(run, batch))
    out.append(float(loop.local_value(metrics["loss"])))
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
  import pytest
  from jaxembed.errors import ConfigError
  config = smoke_config(**{"loss.blockwise": True, "loss.kl_weight": 1.0})
  with pytest.raises(ConfigError, match="loss.blockwise=True cannot be combined with "
                                        "loss.kl_weight=1.0"):
    loop.setup(config, "/nonexistent-unused")
