"""Checkpoints: the one module that imports orbax.

A checkpoint holds three items: `params`, `train_state` (optimizer state, step, RNG)
and `data` (the data iterator's position, given as orbax args by the trainer, e.g.
`grain.checkpoint.CheckpointSave(iterator)`), so a restarted run continues exactly.
Loading a model reads `params` alone, so it needs neither grain nor the optimizer.
Saves are asynchronous; orbax writes each step into a temporary folder and renames it
when complete, so a crash mid-save leaves nothing that a restart would pick up.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxembed.errors import ModelLoadError


DIGESTS = "checkpoint_digests"


class CorruptCheckpoint(Exception):
  """A checkpoint's file differs from the digest written when it was saved."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


def _file_digests(folder: str) -> dict[str, str]:
  """{path relative to `folder`: SHA-256} of every file under it."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, folder).replace(os.sep, "/")] = _sha256(full)
  return out


def remove_partial_saves(root: str) -> None:
  """Removes the temporary folders of unfinished saves (Orbax's
  '*.orbax-checkpoint-tmp*') under the local folder `root`, however deep (a staged
  run's stages); retried briefly, as a writer still finishing may recreate a file."""
  if not root or "://" in root or jax.process_index() != 0:
    return
  pattern = os.path.join(root, "**", "*.orbax-checkpoint-tmp*")
  for _ in range(10):
    partials = [p for p in glob.glob(pattern, recursive=True)
                if "orbax-checkpoint-tmp" not in os.path.dirname(p)]
    if not partials:
      return
    for partial in partials:
      shutil.rmtree(partial, ignore_errors=True)
    time.sleep(0.1)


def first_line(error: BaseException, limit: int = 200) -> str:
  """An exception's first line, shortened: tensorstore's messages run to pages."""
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= limit else line[:limit] + "..."


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
    self._read_only = read_only
    self._unsealed: list[int] = []    # saved steps whose digests are not written yet

  # Digests: orbax stores no checksum, so a flipped bit in a step's files would restore
  # silently. After each save completes, the SHA-256 of every file of the step goes to
  # checkpoint_digests/<step>.json beside the checkpoint folder (local folders; process
  # 0); a restore or a load first checks the files it reads against it.

  @property
  def _digest_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), DIGESTS)

  def _seal(self) -> None:
    """Writes the digests of the steps saved since the last call (call it only when no
    save is in flight) and drops those of steps orbax has deleted."""
    steps, self._unsealed = self._unsealed, []
    if self._read_only or "://" in self.directory or jax.process_index() != 0:
      return
    os.makedirs(self._digest_dir, exist_ok=True)
    kept = set(self.all_steps())
    for step in steps:
      if step in kept:
        digests = _file_digests(os.path.join(self.directory, str(step)))
        tmp = os.path.join(self._digest_dir, f".{step}.json.tmp")
        with open(tmp, "w") as f:
          json.dump(digests, f, indent=0, sort_keys=True)
        os.replace(tmp, os.path.join(self._digest_dir, f"{step}.json"))
    for name in os.listdir(self._digest_dir):
      if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in kept:
        os.remove(os.path.join(self._digest_dir, name))

  def verify(self, step: int, items: tuple[str, ...] = ()) -> None:
    """Raises CorruptCheckpoint when a file of `step` (of its `items` folders, default
    all) differs from the digest written when it was saved (no digest: no check)."""
    if "://" in self.directory:
      return
    path = os.path.join(self._digest_dir, f"{step}.json")
    if not os.path.isfile(path):
      return
    with open(path) as f:
      want = json.load(f)
    root = os.path.join(self.directory, str(step))
    for rel, digest in sorted(want.items()):
      if items and rel.split("/")[0] not in items:
        continue
      full = os.path.join(root, rel)
      if not os.path.isfile(full) or _sha256(full) != digest:
        raise CorruptCheckpoint(f"{rel} differs from the digest written when it was "
                                "saved")

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
    if not self._mngr.is_saving_in_progress():
      self._seal()
    with self._removing_partial_saves():
      if self._mngr.save(step, args=ocp.args.Composite(**items), force=force):
        self._unsealed.append(step)

  @contextlib.contextmanager
  def _removing_partial_saves(self):
    """A save that fails (a full disk: the error surfaces here, from the background
    write) leaves no half-written step folder behind."""
    try:
      yield
    except BaseException:
      if jax.process_index() == 0 and "://" not in self.directory:
        try:             # let the other writers of the failed save stop first
          self._mngr.wait_until_finished()
        except BaseException:
          pass
        remove_partial_saves(self.directory)
      raise

  def restore(self, abstract_state, data=None, step: int | None = None):
    """Restores into `abstract_state` (ShapeDtypeStructs carrying shardings, so each
    array lands sharded as the current mesh wants, whatever mesh wrote it). `data`:
    orbax args restoring the data iterator in place."""
    step = self.latest_step() if step is None else step
    self.verify(step)
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

  def restore_intact(self, abstract_state, make_data=lambda: None, log=print):
    """(state, data) from the newest checkpoint that reads back whole, or (None, None)
    when none does. `make_data`: () -> (orbax args restoring a fresh data iterator,
    that iterator), made anew for each try. A checkpoint that fails to read (a
    truncated or corrupted file) is reported in one line through `log` and moved out
    of the way (`set_aside`), so the run continues exactly from the step before it and
    later saves do not collide with it."""
    for step in sorted(self.all_steps(), reverse=True):
      args, data = make_data() or (None, None)
      try:
        return self.restore(abstract_state, args, step), data
      except Exception as e:   # tensorstore / orbax raise many kinds for a bad file
        where = self.set_aside(step)
        log(f"checkpoint {step} cannot be read ({first_line(e)}); moved to {where}; "
            "trying the one before it")
    return None, None

  def set_aside(self, step: int) -> str:
    """Moves the checkpoint of `step` to corrupt_checkpoints/ beside the checkpoint
    folder (kept for inspection, never read again); returns where it went."""
    root = epath.Path(self.directory)
    target = root.parent / "corrupt_checkpoints" / str(step)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
      target = target.parent / f"{step}.{len(list(target.parent.iterdir()))}"
    (root / str(step)).rename(target)
    digest = os.path.join(self._digest_dir, f"{step}.json")
    if "://" not in self.directory and os.path.isfile(digest):
      os.replace(digest, os.path.join(str(target.parent), f"{target.name}.digests.json"))
    self._mngr.reload()
    return str(target)

  def restore_params(self, abstract_params, step: int | None = None):
    step = self.latest_step() if step is None else step
    if step is None:
      raise ModelLoadError(f"{self.directory}: no checkpoint to load")
    try:
      self.verify(step, ("params",))
      out = self._mngr.restore(
          step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    except Exception as e:
      older = [s for s in self.all_steps() if s < step]
      raise ModelLoadError(
          f"{self.directory}/{step}: the checkpoint cannot be read ({first_line(e)})"
          + (f"; older checkpoints: {older} (resuming the run uses the newest that "
             "reads back)" if older else "")) from e
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
    except Exception as e:
      raise ModelLoadError(f"{self.directory}/{step}: the checkpoint's metadata cannot be "
                           f"read ({first_line(e)})") from e
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
    with self._removing_partial_saves():
      self._mngr.wait_until_finished()
    self._seal()

  def close(self) -> None:
    with self._removing_partial_saves():
      self._mngr.wait_until_finished()
      self._seal()
      self._mngr.close()
