"""Stopping a run by signal: SIGTERM or ctrl-c saves and stops at the next step
boundary; a second one forces the exit without saving; during the final evaluation
the first one stops at once (the last checkpoint is already written). Whole runs in
subprocesses, and the handler alone, without timing."""

import signal
import sys
import time

import pytest

from conftest import run_train, smoke_args, start_train_until
from jaxembed import train


def _run_until(args, marker: str, tmp_path):
  return start_train_until(args, marker, tmp_path / "stderr.txt"), tmp_path / "stderr.txt"


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_stops_at_once(tmp_path, tfds_dir):
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.train.steps=2",
                    "--config.eval.before=False", "--config.eval.batch_size=1",
                    "--config.optim.warmup_steps=1",
                    # 4,561 texts one by one (about 4 s, not 2): the signal lands
                    # within the evaluation even when compiles come from the cache
                    "--config.eval.ood=('docstrings',)")
  run, err = _run_until(args, "eval (after)", tmp_path)
  run.send_signal(signal.SIGTERM)
  assert run.wait(timeout=60) == 0
  text = err.read_text()
  assert "during the final evaluation" in text and "rerun the same command" in text
  assert not (tmp_path / "run" / "metrics.json").exists()
  done = run_train(args)
  assert done.returncode == 0 and (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_forces_the_exit(tmp_path, tfds_dir):
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.train.steps=100000",
                    "--config.eval.before=False", "--config.train.checkpoint_every=100000")
  run, err = _run_until(args, "step 2/", tmp_path)
  run.send_signal(signal.SIGINT)
  # Two signals that reach the process while its main thread waits in native code
  # are handled once (Python keeps one pending flag per signal): as with a person
  # pressing ctrl-c twice, send the second after the first was acknowledged (the
  # save and exit that follow take about a second on the smoke run).
  deadline = time.time() + 60
  while "saving a checkpoint and stopping" not in err.read_text():
    assert run.poll() is None and time.time() < deadline, err.read_text()[-2000:]
    time.sleep(0.002)
  run.send_signal(signal.SIGINT)
  assert run.wait(timeout=60) == 128 + signal.SIGINT, err.read_text()[-2000:]
  assert "again: stopping without saving" in err.read_text()


def test_the_stop_handler_saves_on_the_first_signal_and_forces_on_the_second():
  """The handler alone, without a process or timing: the first signal asks for a save
  at the step boundary, the second raises with 128 + signum; during the final
  evaluation the first one stops at once with exit code 0."""
  stop = train.loop._StopSignal()
  try:
    stop._handle(signal.SIGINT, None)
    assert stop.requested
    with pytest.raises(train.loop.StopNow, match="again") as forced:
      stop._handle(signal.SIGINT, None)
    assert forced.value.exit_code == 128 + signal.SIGINT
    final = train.loop._StopSignal()
    try:
      final.phase = "final_eval"
      with pytest.raises(train.loop.StopNow, match="final evaluation") as at_once:
        final._handle(signal.SIGTERM, None)
      assert at_once.value.exit_code == 0
    finally:
      final.restore()
  finally:
    stop.restore()


def test_a_forced_stop_swallowed_by_logging_is_raised_again_at_the_step_boundary():
  """A second signal that lands while the main thread is inside `logging` raises there,
  and logging's handler swallows the exception (it prints "--- Logging error ---");
  the forced stop must still happen at the next check (step boundary, save)."""
  import io
  import logging as std_logging
  stop = train.loop._StopSignal()
  stop._handle(signal.SIGINT, None)

  class SignalDuringEmit(std_logging.Handler):
    def emit(self, record):
      try:
        stop._handle(signal.SIGINT, None)    # the second ctrl-c arrives here
      except Exception:
        self.handleError(record)            # what StreamHandler.emit does

  logger = std_logging.getLogger("jaxembed-test-second-signal")
  logger.propagate = False
  handler = SignalDuringEmit()
  logger.addHandler(handler)
  stderr = io.StringIO()
  old_stderr, sys.stderr = sys.stderr, stderr
  try:
    logger.warning("step 4/100000")                   # no exception escapes logging
    assert "Logging error" in stderr.getvalue()
    with pytest.raises(train.loop.StopNow, match="again") as forced:
      stop.check()
    assert forced.value.exit_code == 128 + signal.SIGINT
  finally:
    sys.stderr = old_stderr
    logger.removeHandler(handler)
    stop.restore()


def test_a_second_signal_during_the_first_ones_warning_forces_the_stop():
  """A Python signal handler can be interrupted by the next signal. Someone who sees
  the "saving a checkpoint" warning and presses ctrl-c again may land inside the first
  handler, between its warning and the end of the handler: the nested call must find
  the stop requested and force it (it was once handled as a second first signal, and
  the run saved and exited 0)."""
  import logging as std_logging
  stop = train.loop._StopSignal()
  nested = []

  class SecondSignalOnWarning(std_logging.Handler):
    def emit(self, record):
      if "saving a checkpoint" in record.getMessage() and not nested:
        nested.append(record)
        try:
          stop._handle(signal.SIGINT, None)  # the second ctrl-c, inside the first handler
        except train.loop.StopNow:
          pass                               # surfaces at the step boundary via check()

  root = std_logging.getLogger()
  handler = SecondSignalOnWarning()
  root.addHandler(handler)
  try:
    stop._handle(signal.SIGINT, None)
    assert nested, "the warning was not logged"
    with pytest.raises(train.loop.StopNow, match="again") as forced:
      stop.check()
    assert forced.value.exit_code == 128 + signal.SIGINT
  finally:
    root.removeHandler(handler)
    stop.restore()
