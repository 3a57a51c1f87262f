"""optim.trainable: only the parameters whose paths match train. Frozen parameters stay
bit-identical and have no optimizer state; the trainable ones get the full model's
gradient (computed here without any freezing, as the reference)."""

import jax
import numpy as np
import pytest

from jaxembed import sharding as shd, train
from jaxembed.errors import ConfigError
from jaxembed.train.optim import param_path
from jaxembed.train.step import encode_pairs
from test_train_step import batch_with_negatives


def flat(tree):
  """{path: the whole value} (one process holds every shard here)."""
  return {param_path(kp): np.asarray(v) for kp, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def compiled(config):
  run = train.setup(config, "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  step_fn = train.compile_train_step(run, shardings)
  batch = shd.host_batch_to_global(run.mesh, batch_with_negatives(run))
  return run, state, step_fn, batch


def test_frozen_parameters_stay_put_and_have_no_optimizer_state(smoke_config):
  config = smoke_config(**{"optim.trainable": (r"layer_1/(attention|output)/",),
                           "loss.learnable_temperature": True, "train.dropout": False,
                           "optim.learning_rate": 1e-2, "optim.warmup_steps": 0})
  config.mesh.update(data=4, fsdp=2)
  run, state, step_fn, batch = compiled(config)
  before = flat(state.params)
  trainable = {k for k in before if k.startswith("loss/") or (
      k.startswith("encoder/layer_1/") and k.split("/")[2] in ("attention", "output"))}
  assert {k for k, t in flat(run.view.trainable).items() if t} == trainable
  assert "loss/log_scale" in trainable and len(trainable) < len(before) // 2

  # The reference: the gradient of the same loss on the same batch with nothing frozen.
  rng = jax.random.fold_in(state.rng, state.step)
  _, loss_rng = jax.random.split(rng)
  def loss(params):
    q, d, n = encode_pairs(run.model, params, batch, None, deterministic=True)
    return run.loss_fn(q, d, n, rng=loss_rng, loss_params=params["loss"])[0]
  full_grad = flat(jax.jit(jax.grad(loss))(state.params))
  want_norm = np.sqrt(sum(np.sum(full_grad[k].astype(np.float64) ** 2) for k in trainable))
  assert want_norm < np.sqrt(sum(np.sum(g.astype(np.float64) ** 2)
                                 for g in full_grad.values()))

  lowered = step_fn.lower(state, batch)
  state, metrics = step_fn(state, batch)
  assert float(shd.local_value(metrics["grad_norm"])) == pytest.approx(want_norm, rel=1e-4)
  after = flat(state.params)
  for key in before:
    if key in trainable:
      assert not np.array_equal(after[key], before[key]), key
    else:
      assert np.array_equal(after[key], before[key]), key

  # Adam's two moments for the trainable parameters only.
  opt_entries = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  assert opt_entries == 2 * sum(before[k].size for k in trainable if before[k].ndim)

  config.optim.trainable = ()
  _, full_state, full_step, full_batch = compiled(config)
  full_opt = sum(x.size for x in jax.tree.leaves(full_state.opt_state) if x.ndim)
  assert full_opt == 2 * sum(v.size for v in before.values() if v.ndim)
  frozen_mem = lowered.compile().memory_analysis()
  full_mem = full_step.lower(full_state, full_batch).compile().memory_analysis()
  assert frozen_mem.argument_size_in_bytes < full_mem.argument_size_in_bytes


@pytest.mark.parametrize("patterns, match", [
    ((r"pooler_that_is_not",), r"optim.trainable: 'pooler_that_is_not' matches no "
                               r"parameter; paths look like \[.*'encoder/layer_0/attention'"),
    ((r"layer_(1",), r"optim.trainable: 'layer_\(1' is not a regular expression"),
])
def test_bad_trainable_patterns_fail_at_config_time(smoke_config, patterns, match):
  with pytest.raises(ConfigError, match=match):
    train.setup(smoke_config(**{"optim.trainable": patterns}), "/nonexistent-unused")
