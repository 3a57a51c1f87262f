"""Checkpoints: the one module that imports orbax.

A checkpoint holds three items: `params`, `train_state` (optimizer state, step, RNG)
and `data` (the data iterator's position, given as orbax args by the trainer, e.g.
`grain.checkpoint.CheckpointSave(iterator)`), so a restarted run continues exactly.
Loading a model reads `params` alone, so it needs neither grain nor the optimizer.
Saves are asynchronous; orbax writes each step into a temporary folder and renames it
when complete, so a crash mid-save leaves nothing that a restart would pick up.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from jaxembed.errors import ModelLoadError


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    # A bucket path (gs://...) goes to orbax as it is; a local one made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        read_only=read_only, save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state, data=None, *, force: bool = False) -> None:
    """`data`: orbax args saving the data iterator (None: no data item)."""
    items = {
        "params": ocp.args.StandardSave(state.params),
        "train_state": ocp.args.StandardSave(
            {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}),
    }
    if data is not None:
      items["data"] = data
    self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data=None, step: int | None = None):
    """Restores into `abstract_state` (ShapeDtypeStructs carrying shardings, so each
    array lands sharded as the current mesh wants, whatever mesh wrote it). `data`:
    orbax args restoring the data iterator in place."""
    step = self.latest_step() if step is None else step
    items = {
        "params": ocp.args.StandardRestore(abstract_state.params),
        "train_state": ocp.args.StandardRestore(
            {"step": abstract_state.step, "opt_state": abstract_state.opt_state,
             "rng": abstract_state.rng}),
    }
    if data is not None:
      items["data"] = data
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    ts = out["train_state"]
    return abstract_state.replace(params=out["params"], step=ts["step"],
                                  opt_state=ts["opt_state"], rng=ts["rng"])

  def restore_params(self, abstract_params, step: int | None = None):
    step = self.latest_step() if step is None else step
    if step is None:
      raise ModelLoadError(f"{self.directory}: no checkpoint to load")
    out = self._mngr.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return out["params"]

  def saved_param_shapes(self, step: int | None = None) -> dict:
    """The `params` item's tree as saved at `step` (default: the latest), as
    ShapeDtypeStructs, read from the checkpoint's metadata (no array is read)."""
    step = self.latest_step() if step is None else step
    reader = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={"params": ocp.StandardCheckpointHandler()})
    try:
      tree = reader.item_metadata(step)["params"]
    finally:
      reader.close()
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                        dict(tree))

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster (TPU maintenance, SLURM) announced a preemption; all
    hosts agree on the step. Needs jax.distributed; False otherwise."""
    if jax.process_count() == 1:
      return False
    return self._mngr.reached_preemption(step)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()
