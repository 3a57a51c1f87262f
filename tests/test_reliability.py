"""Reliability: no silent damage from bad numbers, bad settings, crashes or shared
workdirs. One test (or more) per failure an operator met on smoke runs; each failed
before the fix."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxembed
from conftest import MINILM, REPO, run_train, smoke_args, start_train, user_env
from jaxembed import sharding as shd, train
from jaxembed.errors import ConfigError, ModelLoadError, NonFiniteError, WorkdirBusyError
from jaxembed.workdir import Workdir

def one_line_error(proc) -> str:
  """The run failed with one line on stderr that starts with 'error:' and no
  traceback."""
  assert proc.returncode != 0, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


# ----------------------------------------------------------------------------- 1. NaN

def test_step_flags_a_non_finite_loss(smoke_config):
  """The check inside the train step: a finite step says so, a NaN loss is flagged."""
  run = train.setup(smoke_config(), "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  batch = shd.host_batch_to_global(run.mesh, next(iter(run.dataset)))
  state, metrics = train.compile_train_step(run, shardings)(
      train.new_state(run, shardings), batch)
  assert bool(shd.local_value(metrics["finite"]))
  real = run.loss_fn
  run.loss_fn = lambda *a, **k: (lambda out: (out[0] * jnp.nan, out[1]))(real(*a, **k))
  _, metrics = train.compile_train_step(run, shardings)(state, batch)
  assert not bool(shd.local_value(metrics["finite"]))


def test_a_non_finite_step_stops_the_run_before_the_next_checkpoint(
    tmp_path, smoke_config, monkeypatch):
  """The loop reads the step's flag before every checkpoint and log line: a bad step
  5 stops the run naming step 5 and the last good checkpoint (4, kept), and nothing
  after step 4 is saved."""
  from jaxembed.train import loop
  real_compile = loop.compile_train_step

  def poisoned(run, shardings):
    step_fn = real_compile(run, shardings)

    def call(state, batch):
      new, metrics = step_fn(state, batch)
      bad = int(shd.local_value(new.step)) >= 5
      return new, dict(metrics, finite=jnp.asarray(not bad))
    return call
  monkeypatch.setattr(loop, "compile_train_step", poisoned)
  config = smoke_config(**{"train.checkpoint_every": 2, "train.log_every": 3,
                           "train.steps": 10, "eval.before": False})
  with pytest.raises(NonFiniteError, match=r"not finite at step 5.*checkpoint is step 4"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  from jaxembed.checkpoint import Checkpointer
  assert Checkpointer(str(tmp_path / "run" / "checkpoints"), read_only=True).all_steps() == [2, 4]


def test_nan_learning_rate_is_refused_before_anything_is_written(tmp_path, smoke_config):
  with pytest.raises(ConfigError, match="optim.learning_rate=nan"):
    train.train_and_evaluate(smoke_config(**{"optim.learning_rate": float("nan")}),
                             str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_nan_in_the_saved_config_still_matches_itself(tmp_path, smoke_config):
  config = smoke_config(**{"loss.false_negative_margin": float("nan")})
  wd = Workdir(str(tmp_path))
  wd.write(Workdir.CONFIG, config.to_json_best_effort())
  assert wd.check_config(config)


@pytest.mark.slow
def test_diverging_run_stops_with_one_line_and_saves_no_nan(tmp_path, tfds_dir):
  """A loss that overflows (scale 1e38) stops at step 1 with one line and no
  checkpoint; the same command is refused the same way (not as a config change)."""
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.loss.scale=1e38",
                    "--config.train.checkpoint_every=1", "--config.eval.before=False")
  for _ in range(2):
    done = run_train(args)
    line = one_line_error(done)
    assert "not finite at step 1" in line and "none yet" in line, line
  assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))


def test_load_refuses_non_finite_weights(tmp_path):
  from jaxembed.export import export
  model = jaxembed.load(MINILM)
  out = export(model, str(tmp_path / "m"), format="flax")
  model.params = jax.tree.map(lambda x: x, model.params)
  model.params["encoder"]["embeddings_norm"]["scale"] = (
      model.params["encoder"]["embeddings_norm"]["scale"].at[0].set(jnp.nan))
  bad = export(model, str(tmp_path / "bad"), format="flax")
  assert jaxembed.load(out).encode(["fine"]).shape == (1, 384)
  with pytest.raises(ModelLoadError, match="non-finite weights"):
    jaxembed.load(bad)


# ----------------------------------------------------------------------------- 2, 5. settings

@pytest.mark.parametrize("overrides, message", [
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints=0 must be an integer >= 1"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every=0 must be"),
    ({"train.log_every": 0}, "train.log_every=0 must be"),
    ({"data.seq_len": 0}, "data.seq_len=0 must be"),
    ({"optim.weight_decay": float("inf")}, "optim.weight_decay=inf"),
    # each used to train nothing and exit 0
    ({"loss.scale": 0.0}, r"loss.scale=0.0 must be a finite number > 0"),
    ({"loss.scale": -20.0}, r"loss.scale=-20.0 must be a finite number > 0"),
    ({"train.batch_size": 1}, r"train.batch_size=1: with one pair a batch has no negatives"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, smoke_config,
                                                             overrides, message):
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(smoke_config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_finished_run_can_be_extended(tmp_path, smoke_config):
  """train.steps (and the logging, checkpoint and evaluation cadence) may change on a
  rerun; anything else is still refused."""
  config = smoke_config(**{"train.steps": 4, "train.checkpoint_every": 2,
                           "eval.before": False})
  first = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert first.completed and first.step == 4
  longer = smoke_config(**{"train.steps": 6, "train.checkpoint_every": 3,
                           "eval.before": False})
  second = train.train_and_evaluate(longer, str(tmp_path / "run"))
  assert second.completed and second.step == 6
  steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "train_log.jsonl")]
  assert steps == [2, 4, 6]
  with pytest.raises(ConfigError, match="optim.learning_rate"):
    train.train_and_evaluate(smoke_config(**{"train.steps": 6, "optim.learning_rate": 1.0,
                                             "eval.before": False}),
                             str(tmp_path / "run"))


# ----------------------------------------------------------------------------- 3. encode

@pytest.fixture(scope="module")
def minilm():
  return jaxembed.load(MINILM)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.encode(["a"], batch_size=-1), ConfigError, "batch_size=-1"),
    (lambda m: m.encode(["a"], batch_size=0), ConfigError, "batch_size=0"),
    (lambda m: m.encode(["a", None]), TypeError, r"texts\[1\] is NoneType"),
    (lambda m: m.encode(["a", 3]), TypeError, r"texts\[1\] is int"),
    (lambda m: m.encode_tokens([None]), TypeError, r"texts\[0\] is NoneType"),
    (lambda m: m.encode(["a"], dim=8.7), ConfigError, "dim=8.7 must be a whole number"),
    (lambda m: m.encode(["a"], layer=True), TypeError, "layer=True must be an integer"),
    (lambda m: m.encode_tokens(["a"], batch_size=0), ConfigError, "batch_size=0"),
])
def test_encode_refuses_bad_arguments(minilm, call, error, message):
  with pytest.raises(error, match=message):
    call(minilm)


def test_encode_takes_whole_floats_and_numpy_integers(minilm):
  want = minilm.encode(["a dog"], layer=2, dim=8)
  np.testing.assert_array_equal(minilm.encode(["a dog"], layer=np.int64(2), dim=8.0), want)


# ----------------------------------------------------------------------------- 4. shared workdir

LOCK_AND_WAIT = """
import sys, time
from jaxembed.workdir import Workdir
wd = Workdir(sys.argv[1])
wd.lock()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_holder_frees_it(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirBusyError, match=f"in use by process {holder.pid} on "):
      Workdir(str(tmp_path)).lock()
  finally:
    holder.kill()
    holder.wait()
  wd = Workdir(str(tmp_path))   # the killed holder's lock went with it
  wd.lock()
  assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()
  wd.unlock()


@pytest.mark.slow
def test_two_runs_on_one_workdir(tmp_path, tfds_dir):
  """The second of two runs started together is refused in one line, and the first
  one's logs hold each step once."""
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.eval.before=False")
  first = start_train(args, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (tmp_path / "run" / ".lock").exists() and time.time() < deadline:
    time.sleep(0.2)
  second = run_train(args)
  first_err = first.communicate(timeout=300)[1]
  assert first.returncode == 0, first_err[-3000:]
  assert "is in use by process" in one_line_error(second)
  steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "train_log.jsonl")]
  assert steps == sorted(set(steps))


# ----------------------------------------------------------------------------- 6. workers

def _children(pid: int) -> list[int]:
  out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                       text=True).stdout
  return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:   # a zombie is dead
    return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
def test_worker_processes_die_with_a_killed_run(tmp_path, tfds_dir):
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.data.workers=2",
                    "--config.train.steps=400", "--config.eval.before=False")
  run = start_train(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline, workers = time.time() + 180, []
    while time.time() < deadline and not (tmp_path / "run" / "train_log.jsonl").exists():
      time.sleep(0.5)
    workers = [p for p in _children(run.pid) if _alive(p)]
    assert len(workers) >= 2, "the run started no worker processes"
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
      time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the run"
  finally:
    if run.poll() is None:
      run.kill()


# ----------------------------------------------------------------------------- 7. logs

def test_logs_are_cut_back_and_a_torn_line_is_dropped(tmp_path):
  wd = Workdir(str(tmp_path))
  (tmp_path / Workdir.TRAIN_LOG).write_text(
      '{"step": 2, "loss": 1}\n{"step": 4, "loss": 1}\n{"step": 6, "lo')
  (tmp_path / Workdir.EVAL_LOG).write_text(
      '{"step": 0, "label": "before", "grid": []}\n{"step": 4, "label": "step 4"}\n')
  wd.truncate_log(4)
  assert [json.loads(l)["step"] for l in open(tmp_path / Workdir.TRAIN_LOG)] == [2, 4]
  wd.truncate_log(0)   # no checkpoint was completed: a fresh start keeps only 'before'
  assert (tmp_path / Workdir.TRAIN_LOG).read_text() == ""
  assert [json.loads(l)["label"] for l in open(tmp_path / Workdir.EVAL_LOG)] == ["before"]
  wd.append_log({"step": 2})
  assert [json.loads(l)["step"] for l in open(tmp_path / Workdir.TRAIN_LOG)] == [2]


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path, tfds_dir):
  """Killed after logging steps but before any checkpoint completed (the checkpoint
  interval is longer than the kill delay), the rerun logs every step once."""
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.train.checkpoint_every=24",
                    "--config.eval.before=False")
  log = tmp_path / "run" / "train_log.jsonl"
  run = start_train(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
    time.sleep(0.1)
  run.send_signal(signal.SIGKILL)
  run.wait()
  assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))
  with open(log, "a") as f:
    f.write('{"step": 9')           # and a line torn by the kill
  done = run_train(args)
  assert done.returncode == 0, done.stderr[-3000:]
  steps = [json.loads(l)["step"] for l in open(log)]
  assert steps == list(range(2, 25, 2))


# ----------------------------------------------------------------------------- 8. buckets

@pytest.mark.skipif(__import__("importlib").util.find_spec("gcsfs") is not None,
                    reason="gcsfs is installed: the message for its absence cannot show")
def test_bucket_paths_say_what_they_need_and_create_no_local_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match="needs the gcsfs package: pip install gcsfs"):
    jaxembed.load("gs://bucket/run")
  with pytest.raises(ConfigError, match="needs the gcsfs package"):
    Workdir("gs://bucket/run")
  from jaxembed import checkpoint
  seen = {}

  class FakeManager:
    def __init__(self, directory, options):
      seen["directory"] = directory
  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", FakeManager)
  checkpoint.Checkpointer("gs://bucket/run/checkpoints")
  assert seen["directory"] == "gs://bucket/run/checkpoints"
  assert not os.path.exists(tmp_path / "gs:")


# ----------------------------------------------------------------------------- 9. one line

@pytest.mark.slow
def test_unwritable_workdir_and_full_disk_fail_in_one_line(tmp_path, tfds_dir):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  done = run_train(smoke_args(blocker / "run", tfds_dir))
  assert "writing the run failed" in one_line_error(done)

  def small_files():   # every file this process writes is cut at 64 KiB: a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
  full = subprocess.run([sys.executable, "-m", "experiments.train",
                         *smoke_args(tmp_path / "full", tfds_dir, "--config.eval.before=False")],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=user_env(), preexec_fn=small_files)
  line = one_line_error(full)
  assert "File too large" in line or "RESOURCE_EXHAUSTED" in line, line
  assert full.returncode == 1


# ----------------------------------------------------------------------------- 10. CSV / TSV

def _write(tmp_path, name, data: bytes):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def test_csv_tsv_quotes_newlines_and_bom(tmp_path):
  from jaxembed.data import readers
  rows, _ = readers.read_pairs(_write(
      tmp_path, "a.csv", 'anchor,positive\n"two\nlines",b\n"x, y","say ""hi"""\n'.encode()))
  assert [(r["anchor"], r["positive"]) for r in rows] == [("two\nlines", "b"),
                                                          ("x, y", 'say "hi"')]
  rows, _ = readers.read_pairs(_write(
      tmp_path, "a.tsv", 'anchor\tpositive\n"quoted" word\tsays "hi"\n'.encode()))
  assert (rows[0]["anchor"], rows[0]["positive"]) == ('"quoted" word', 'says "hi"')
  rows, _ = readers.read_pairs(_write(
      tmp_path, "bom.csv", "\ufeffanchor,positive\na,b\n".encode()))
  assert (rows[0]["anchor"], rows[0]["positive"]) == ("a", "b")
  with pytest.raises(Exception, match=r"b.csv:4: 3 columns"):   # the row after a 2-line one
    readers.read_pairs(_write(tmp_path, "b.csv",
                              b'anchor,positive\n"multi\nline",b\nx,y,z\n'))


# ----------------------------------------------------------------------------- 11. resume
# (stopping a run by signal: tests/test_stop_signals.py)

@pytest.mark.slow
def test_changed_training_file_is_refused_on_resume(tmp_path, tfds_dir):
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"anchor": f"query {i}", "positive": f"text {i}"}) + "\n"
                          for i in range(64)))
  args = smoke_args(tmp_path / "run", tfds_dir, "--config.data.source=file",
                    f"--config.data.train_file={data}", "--config.eval.before=False",
                    "--config.optim.warmup_steps=1",
                    config="configs/ood_ablation.py:smoke,arm=pairs")
  assert run_train(args + ["--config.train.steps=2"]).returncode == 0
  with open(data, "a") as f:
    f.write(json.dumps({"anchor": "new", "positive": "row"}) + "\n")
  line = one_line_error(run_train(args + ["--config.train.steps=4"]))
  assert "the training data changed since this run started" in line and "pairs.jsonl" in line
