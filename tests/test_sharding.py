"""The same train_step on 1 device and on 8 (data x fsdp) gives the same losses, and
the parameters really are split across devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxembed.errors import ConfigError
from jaxembed import sharding as shd, train


def train_steps(config, devices, n_steps=3):
  """n_steps of the run's compiled step on its own data: (run, state, [(metrics as
  floats, the batch)] per step)."""
  run = train.setup(config, "/nonexistent-unused", devices=devices)
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  step_fn = train.compile_train_step(run, shardings)
  data = iter(run.dataset)
  steps = []
  for _ in range(n_steps):
    batch = next(data)
    state, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
    steps.append(({k: float(v) for k, v in shd.local_value(metrics).items()}, batch))
  return run, state, steps


def run_steps(config, devices, n_steps=3):
  run, state, steps = train_steps(config, devices, n_steps)
  return run, state, np.array([metrics["loss"] for metrics, _ in steps])


@pytest.mark.parametrize("mesh", [dict(data=4, fsdp=2, tensor=1),
                                  dict(data=2, fsdp=2, tensor=2)])
def test_one_device_and_eight_devices_agree(smoke_config, mesh):
  config = smoke_config(**{"model.bert_overrides.hidden_size": 64,
                           "model.bert_overrides.num_heads": 4,
                           "model.bert_overrides.intermediate_size": 128,
                           "loss.matryoshka.dims": (16, 32, 64),
                           "eval.dims": (16, 32, 64)})
  config.mesh.update(data=1, fsdp=1, tensor=1)
  _, _, single = run_steps(config, jax.devices()[:1])
  config.mesh.update(**mesh)
  run, state, sharded = run_steps(config, jax.devices())
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
  assert not np.allclose(single[0], single[-1]), "training should move the loss"
  # Parameters are born sharded: an FSDP-split kernel holds 1/fsdp of it per device.
  kernel = state.params["encoder"]["layer_0"]["intermediate"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  shard = kernel.addressable_shards[0].data
  assert shard.shape == (64 // mesh["fsdp"], 128 // mesh["tensor"])


def test_indivisible_parameter_is_named(smoke_config):
  config = smoke_config()  # hidden 32: 'embed' over fsdp=8 leaves 4, fine; make it odd
  config.model.bert_overrides.hidden_size = 36
  config.model.bert_overrides.num_heads = 2
  config.mesh.update(data=1, fsdp=8, tensor=1)
  with pytest.raises(ConfigError, match=r"parameter encoder/.* dimension 36 .*fsdp"):
    train.setup(config, "/nonexistent-unused")


@pytest.mark.parametrize("sizes, match", [
    (dict(data=3, fsdp=1), "multiply to 3, but there are 8 devices"),
    (dict(data=-1, fsdp=-1), "only one axis may be -1"),
    (dict(data=-1, fsdp=3), "do not divide"),
    (dict(model=2), "unknown axes"),
])
def test_bad_mesh_fails_before_compiling(sizes, match):
  with pytest.raises(ConfigError, match=match):
    shd.make_mesh(sizes)


@pytest.mark.parametrize("sizes", [dict(data=8), dict(data=4, fsdp=2),
                                   dict(dcn_data=2, data=2, tensor=2),
                                   dict(fsdp=2, tensor=4)])
def test_mesh_from_jax_make_mesh_keeps_device_order_and_auto_axes(sizes):
  """On CPU devices (one slice) `jax.make_mesh` lays devices out in order, exactly as
  the plain reshape of the device list did before; the axes stay Auto."""
  from jax.sharding import AxisType
  mesh = shd.make_mesh(sizes)
  assert mesh.axis_names == shd.AXES
  want = np.asarray(jax.devices()).reshape([sizes.get(a, 1) for a in shd.AXES])
  assert mesh.devices.shape == want.shape and (mesh.devices == want).all()
  assert set(mesh.axis_types) == {AxisType.Auto}


def test_minus_one_takes_the_rest():
  mesh = shd.make_mesh(dict(data=-1, fsdp=2, tensor=1))
  assert dict(mesh.shape) == {"dcn_data": 1, "data": 4, "fsdp": 2, "tensor": 1}
