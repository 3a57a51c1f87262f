"""The training loop: resume or start, train, checkpoint, evaluate.

`train_and_evaluate(config, workdir)` is the whole job: `setup` checks everything and
builds the run (`train/run.py`), the state is restored or created (`train/state.py`),
then `Loop` trains with periodic logging, checkpoints and evaluations
(`train/evaluation.py`), and evaluates once more at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxembed import sharding as shd
from jaxembed.checkpoint import Checkpointer
from jaxembed.errors import NonFiniteError
from jaxembed.evals import grid as grid_eval
from jaxembed.train import inputs
from jaxembed.train import stages as stages_lib
from jaxembed.train.evaluation import cached_evaluate, evaluate
from jaxembed.train.run import Run, setup
from jaxembed.train.state import TrainState, abstract_state, new_state
from jaxembed.train.step import compile_train_step
from jaxembed.train.summary import MetricWriter
from jaxembed.workdir import Workdir


class StopNow(Exception):
  """Raised by the signal handler where waiting for a step boundary makes no sense
  (during the final evaluation) or when a second signal asks to force the exit."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


class _StopSignal:
  """SIGTERM (and SIGINT) ask the loop to save and stop at the next step boundary.

  During the final evaluation (the last checkpoint is already written) a signal stops
  at once; a second signal while a stop is pending forces the exit without saving."""

  def __init__(self):
    self.requested = False
    self.forced = None         # the StopNow of a second signal, kept (see `check`)
    self.phase = "train"       # train | final_eval
    self.last_checkpoint = None
    self._old = {}
    # With several processes, one process alone stopping would leave the others
    # waiting in a collective: there jax's preemption notifier owns SIGTERM and all
    # processes agree on the step through Checkpointer.reached_preemption.
    signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ()
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.phase == "final_eval":
      raise StopNow(f"received {name} during the final evaluation; the last checkpoint "
                    f"(step {self.last_checkpoint}) is saved: rerun the same command to "
                    "evaluate", 0)
    if self.requested:
      self.forced = StopNow(f"received {name} again: stopping without saving; the last "
                            f"checkpoint is step {self.last_checkpoint}", 128 + signum)
      raise self.forced
    # Set before logging: a Python signal handler can itself be interrupted, and a
    # second signal that lands while the warning is being written (someone who sees
    # it and presses ctrl-c again) must find the stop already requested. Its StopNow
    # may then be swallowed by logging; `check` raises it again.
    self.requested = True
    logging.warning("received %s: saving a checkpoint and stopping (send it again to "
                    "stop without saving)", name)

  def check(self):
    """Raises the forced stop again. An exception raised by a signal handler surfaces
    wherever the main thread happens to be, and code that catches everything there
    swallows it: `logging` does, printing "--- Logging error ---" and carrying on (a
    second ctrl-c during a progress line was lost that way). The loop calls this at
    each step boundary and before each save."""
    if self.forced is not None:
      raise self.forced

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


@dataclasses.dataclass
class Result:
  step: int
  completed: bool            # False when stopped by a signal before the last step
  before: list | None
  after: list | None


@dataclasses.dataclass
class Loop:
  """What the loop works with: the run, its restored or new state, the compiled
  step, the checkpointer, the data iterator and the writers."""
  run: Run
  state: TrainState
  step_fn: Callable
  ckpt: Checkpointer
  data_iter: Any
  writer: MetricWriter
  stop: _StopSignal
  # Per-step "finite" flags (device scalars) not yet read back: reading them only at
  # log and checkpoint steps keeps the host from waiting on every step.
  pending: list = dataclasses.field(default_factory=list)
  pending_from: int = 0
  # The run starts from the pretrained model (not an earlier stage's): the grid
  # "before" scores it as published (`Run.as_published`).
  fresh_start: bool = False

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config

  @property
  def wd(self) -> Workdir:
    return self.run.workdir

  def check_finite(self) -> None:
    """Stops with the first step whose loss or gradient was not finite (that step
    and the ones after it changed nothing; no checkpoint is written after it)."""
    flags = [bool(shd.local_value(f)) for f in self.pending]
    if not all(flags):
      bad = self.pending_from + flags.index(False) + 1
      self.ckpt.wait()
      last = self.ckpt.latest_step()
      raise NonFiniteError(
          f"the loss or its gradient is not finite at step {bad}; stopped. The last good "
          f"checkpoint is step {last} (kept{'' if last is not None else ': none yet'}). "
          "Lower optim.learning_rate, check the data, or raise optim.grad_clip")
    self.pending_from += len(self.pending)
    self.pending = []

  def save(self, step: int, force: bool = False) -> None:
    self.stop.check()
    self.check_finite()
    self.ckpt.save(step, self.state, grain.checkpoint.CheckpointSave(self.data_iter),
                   force=force)
    self.stop.last_checkpoint = step

  def record_eval(self, step: int, rows: list[dict], label: str) -> None:
    if label == "after":   # a rerun of a finished run evaluates again: replace it
      self.wd.drop_log_entries(Workdir.EVAL_LOG, lambda r: r.get("label") == "after")
    self.wd.append_log({"step": step, "label": label, "grid": rows}, Workdir.EVAL_LOG)
    self.writer.grid(step, rows)
    self.writer.flush()

  def before(self):
    """The grid before training: computed at step 0, then kept in the workdir so a
    resumed run reuses it."""
    run, wd = self.run, self.wd
    # Evaluation runs collectives, so every process must take the same branch: process
    # 0's view of the workdir decides (on a pod, other hosts may not share its disk).
    cached = bool(multihost_utils.broadcast_one_to_all(
        np.int32(wd.exists(Workdir.METRICS_BEFORE))))
    if cached:
      if jax.process_index() != 0:
        return None  # only process 0 writes metrics.json
      rows = wd.read_json(Workdir.METRICS_BEFORE)
      if not any(r.get("label") == "before" for r in wd.read_log(Workdir.EVAL_LOG)):
        self.record_eval(0, rows, "before")   # killed between the two writes
      return rows
    if int(shd.local_value(self.state.step)) != 0:
      return None  # trained before metrics were asked for: nothing to compare with
    params = self.state.params
    if self.fresh_start:
      params = run.as_published(params)
    rows = cached_evaluate(run, params, "before")
    # The log first, the cache last: a run killed in between evaluates again.
    wd.drop_log_entries(Workdir.EVAL_LOG, lambda r: r.get("label") == "before")
    self.record_eval(0, rows, "before")
    wd.write(Workdir.METRICS_BEFORE, json.dumps(rows, indent=1))
    if jax.process_index() == 0:
      print(grid_eval.format_table(None, rows), flush=True)
    return rows

  def evaluate_during(self, step: int, before) -> None:
    rows = evaluate(self.run, self.state.params, f"step {step}")
    self.record_eval(step, rows, f"step {step}")
    if jax.process_index() == 0:
      print(grid_eval.format_table(before, rows), flush=True)

  def log(self, step: int, metrics, t_last: float, n_last: int) -> None:
    config, total = self.config, self.config.train.steps
    self.check_finite()
    metrics = shd.local_value(metrics)
    loss = float(metrics["loss"])
    now = time.time()
    rate = (step - n_last) * config.train.batch_size / max(now - t_last, 1e-9)
    eta = (total - step) * config.train.batch_size / max(rate, 1e-9)
    record = {"step": step, "loss": loss,
              "learning_rate": float(self.run.schedule(step - 1)),
              "examples_per_sec": rate, "grad_norm": float(metrics["grad_norm"])}
    # The objective's parts (each Matryoshka cell's loss, 'loss/L<layer>_d<dim>'), as
    # of the logged step.
    record.update({k: float(v) for k, v in metrics.items() if k.startswith("loss/")})
    # A learnable temperature (and SigLIP's bias), as the objective uses them.
    record.update({k: float(metrics[k]) for k in ("scale", "bias") if k in metrics})
    self.wd.append_log(record)
    self.writer.scalars(step, {k: v for k, v in record.items() if k != "step"}, "train/")
    logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f ex/s  eta %ds", step, total,
                 loss, record["learning_rate"], rate, eta)

  def run_to_end(self, final_eval: bool = True) -> Result:
    """Trains to config.train.steps, then evaluates (`final_eval`; a stage before the
    last of a staged recipe does not)."""
    run, config, ckpt = self.run, self.config, self.ckpt
    total = config.train.steps
    before = self.before() if config.eval.before else None
    start = int(shd.local_value(self.state.step))
    self.pending_from = start
    self.stop.last_checkpoint = ckpt.latest_step()
    t_last, n_last = time.time(), start
    logging.info("training steps %d..%d, global batch %d, mesh %s", start, total,
                 config.train.batch_size, dict(run.mesh.shape))
    step = start
    every = config.train.eval_every
    if every and 0 < start < total and start % every == 0 and not any(
        r.get("label") == f"step {start}" for r in self.wd.read_log(Workdir.EVAL_LOG)):
      # Stopped after this step's checkpoint, before its evaluation was logged.
      self.evaluate_during(start, before)
    while step < total:
      self.stop.check()
      if self.stop.requested or ckpt.reached_preemption(step):
        if step not in ckpt.all_steps():  # a regular save may have just written it
          self.save(step, force=True)
        ckpt.wait()
        logging.info("stopped at step %d; checkpoint saved, rerun the same command to "
                     "continue", step)
        ckpt.close()
        return Result(step=step, completed=False, before=before, after=None)
      batch = shd.host_batch_to_global(run.mesh, next(self.data_iter))
      self.state, metrics = self.step_fn(self.state, batch)
      self.pending.append(metrics["finite"])
      step += 1
      logged = step % config.train.log_every == 0 or step == total
      if step == start + 1 and not logged:
        # The first step compiles: the rate and the ETA count from its end, so the
        # first ETA is not inflated by compilation.
        jax.block_until_ready(metrics["loss"])
        logging.info("first step done in %.1f s (compilation included); the rate and "
                     "ETA count from here", time.time() - t_last)
        t_last, n_last = time.time(), step
      if logged:
        self.log(step, metrics, t_last, n_last)
        t_last, n_last = time.time(), step
      if step == total:
        # Work on the trained model that its last checkpoint keeps (Run.end_hooks).
        for hook in run.end_hooks:
          self.state = self.state.replace(params=hook(run, self.state.params))
      if step % config.train.checkpoint_every == 0 or step == total:
        self.save(step)
      if every and step % every == 0 and step < total:
        self.evaluate_during(step, before)
    self.check_finite()
    ckpt.wait()
    ckpt.close()
    if not final_eval:
      return Result(step=step, completed=True, before=before, after=None)

    self.stop.phase = "final_eval"
    after = evaluate(run, self.state.params, "after")
    self.record_eval(step, after, "after")
    if jax.process_index() == 0:
      self.wd.write(Workdir.METRICS, json.dumps({"before": before, "after": after},
                                                indent=1))
      print(grid_eval.format_table(before, after), flush=True)
      try:
        figures = grid_eval.heatmaps(before, after)
      except ImportError:
        logging.warning("wrote %s; no %s/: the heatmaps need matplotlib (pip install "
                        "'jaxembed[eval]')", self.wd / Workdir.METRICS, Workdir.HEATMAPS)
      else:
        for metric, (png, rgb) in figures.items():
          self.wd.write(f"{Workdir.HEATMAPS}/{grid_eval.heatmap_file_name(metric)}", png)
        self.writer.images(step, {f"grid/{m}": rgb for m, (_, rgb) in figures.items()})
        logging.info("wrote %s and %d heatmaps in %s", self.wd / Workdir.METRICS,
                     len(figures), self.wd / Workdir.HEATMAPS)
    return Result(step=step, completed=True, before=before, after=after)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Result:
  """The whole job; with `config.stages`, every stage in turn (`train/stages.py`)."""
  stop = _StopSignal()
  try:
    plan = stages_lib.plan(config, workdir)
    previous = None
    for stage in plan:
      if len(plan) > 1:
        if not stage.last and stages_lib.finished(stage):
          logging.info("stage %d/%d (%s) finished earlier: %s", stage.index + 1,
                       len(plan), stage.name, stage.workdir)
          previous = stage
          continue
        logging.info("stage %d/%d (%s): %d steps in %s", stage.index + 1, len(plan),
                     stage.name, stage.config.train.steps, stage.workdir)
        if stage.last and stage.config.eval.before:
          _copy_before(plan[0].workdir, stage.workdir)
      result = _train_and_evaluate(stage.config, stage.workdir, stop, previous,
                                   final_eval=stage.last)
      if not result.completed:
        return result
      previous = stage
    return result
  finally:
    stop.restore()


def _copy_before(first: str, last: str) -> None:
  """The first stage's "before" grid, for the last stage's table (process 0's disk)."""
  source, target = Workdir(first), Workdir(last)
  if (jax.process_index() == 0 and source.exists(Workdir.METRICS_BEFORE)
      and not target.exists(Workdir.METRICS_BEFORE)):
    target.write(Workdir.METRICS_BEFORE,
                 json.dumps(source.read_json(Workdir.METRICS_BEFORE), indent=1))


def _train_and_evaluate(config, workdir, stop: _StopSignal, previous=None,
                        final_eval: bool = True) -> Result:
  run = setup(config, workdir)
  wd = run.workdir
  wd.lock()
  try:
    return _restore_and_train(run, config, wd, stop, previous, final_eval)
  finally:
    wd.unlock()


def _resume(run: Run, ckpt: Checkpointer, abstract, wd: Workdir):
  """(state, data iterator) from the newest checkpoint that reads back (an unreadable
  one is reported in one line and set aside), or (None, None) when none does."""
  def fresh_data():
    it = iter(run.dataset)
    return grain.checkpoint.CheckpointRestore(it), it
  state, data_iter = ckpt.restore_intact(abstract, fresh_data, log=logging.warning)
  if state is None:
    logging.warning("no checkpoint in %s reads back: training from the start",
                    wd.checkpoints)
  else:
    logging.info("resuming from %s/%d", wd.checkpoints, int(shd.local_value(state.step)))
  return state, data_iter


def _restore_and_train(run: Run, config, wd: Workdir, stop: _StopSignal, previous=None,
                       final_eval: bool = True) -> Result:
  resuming = wd.check_config(config)
  wd.check_fingerprint(inputs.data_fingerprint(config), resuming)
  wd.write_config(config, run.folder, run.spec)
  wd.write(Workdir.PRECISION, json.dumps({
      "model.dtype": config.model.get("dtype", ""),
      "matmul_dtype": run.text_config.dtype}, indent=1))
  ckpt = Checkpointer(wd.checkpoints, keep=config.train.keep_checkpoints)
  abstract, shardings = abstract_state(run)
  state = data_iter = None
  if resuming and ckpt.latest_step() is not None:
    state, data_iter = _resume(run, ckpt, abstract, wd)
  if state is None:
    data_iter = iter(run.dataset)
    if previous is not None:
      logging.info("starting from stage %s's weights (%s)", previous.name, previous.workdir)
      state = new_state(run, shardings, stages_lib.carried_params(run, previous))
    else:
      state = new_state(run, shardings)
  # Log lines past the restored step (or any training lines, when no checkpoint was
  # completed) were written by a run that then died: drop them, so the logs read as
  # one run.
  start = int(shd.local_value(state.step))
  wd.truncate_log(start)
  step_fn = compile_train_step(run, shardings)
  # A resumed run re-logs from start + 1 (from 0 when no checkpoint was completed):
  # TensorBoard hides what the interrupted run logged from there on.
  writer = MetricWriter(str(wd / Workdir.TENSORBOARD), remote=wd.remote,
                        purge_step=(start + 1 if start else 0) if resuming else None)
  writer.text("config", "```\n" + config.to_json_best_effort(indent=1) + "\n```", start)
  try:
    return Loop(run=run, state=state, step_fn=step_fn, ckpt=ckpt, data_iter=data_iter,
                writer=writer, stop=stop,
                fresh_start=previous is None).run_to_end(final_eval)
  finally:
    writer.close()
