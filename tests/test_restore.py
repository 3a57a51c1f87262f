"""A checkpoint written on one device count restores onto another (8 -> 4 -> 1 and
1 -> 8), and training continues with the same losses."""

import grain
import jax
import numpy as np
import pytest

from jaxembed.checkpoint import Checkpointer
from jaxembed import sharding as shd, train
from jaxembed.train import loop


def make(config, devices, workdir):
  run = train.setup(config, workdir, devices=devices)
  abstract, shardings = train.abstract_state(run)
  return run, abstract, shardings, train.compile_train_step(run, shardings)


def steps(run, step_fn, state, data, n):
  out = []
  for _ in range(n):
    state, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, next(data)))
    out.append(float(shd.local_value(metrics["loss"])))
  return state, np.array(out)


@pytest.mark.parametrize("first, then", [(8, 4), (4, 1), (1, 8)])
def test_restore_on_another_device_count(tmp_path, smoke_config, first, then):
  config = smoke_config()
  config.mesh.update(data=-1, fsdp=2 if min(first, then) >= 2 else 1, tensor=1)
  devices = jax.devices()
  run, _, shardings, step_fn = make(config, devices[:first], str(tmp_path))
  state = train.new_state(run, shardings)
  data = iter(run.dataset)
  state, _ = steps(run, step_fn, state, data, 3)
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(3, state, grain.checkpoint.CheckpointSave(data), force=True)
  ckpt.wait()
  _, reference = steps(run, step_fn, state, data, 3)  # how the run would go on

  run2, abstract2, _, step_fn2 = make(config, devices[:then], str(tmp_path))
  data2 = iter(run2.dataset)
  restored = Checkpointer(str(tmp_path / "ckpt")).restore(abstract2, grain.checkpoint.CheckpointRestore(data2))
  assert int(shd.local_value(restored.step)) == 3
  kernel = restored.params["encoder"]["layer_0"]["intermediate"]["kernel"]
  assert len(kernel.sharding.device_set) == then
  _, continued = steps(run2, step_fn2, restored, data2, 3)
  np.testing.assert_allclose(continued, reference, rtol=1e-5, atol=1e-5)


def test_stop_right_after_a_regular_checkpoint(tmp_path, smoke_config, monkeypatch):
  """A stop request at a step that was just checkpointed must not save it twice."""
  config = smoke_config(**{"train.checkpoint_every": 4, "eval.before": False,
                           "train.steps": 12})
  calls = {"n": 0}
  real_next = shd.host_batch_to_global

  def batch_then_stop(mesh, local):
    calls["n"] += 1
    if calls["n"] == 4:  # asked during step 4, which is then also a regular save
      stopper.requested = True
    return real_next(mesh, local)

  stopper = loop._StopSignal()
  stopper.restore()  # leave the process's signal handlers alone
  monkeypatch.setattr(shd, "host_batch_to_global", batch_then_stop)
  monkeypatch.setattr(loop, "_StopSignal", lambda: stopper)
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not result.completed and result.step == 4
  steps = Checkpointer(str(tmp_path / "run" / "checkpoints")).all_steps()
  assert max(steps) == result.step
