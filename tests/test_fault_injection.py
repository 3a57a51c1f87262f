"""Fault injection: a smoke run killed with SIGKILL at random moments (while
training, writing checkpoints, evaluating) and rerun each time ends with the same
metrics and the same logs as a run that was never interrupted.

Then two faults of the disk: the latest checkpoint's largest file cut in half (the
rerun sets it aside and resumes from the one before), and a disk that fills while a
checkpoint is written (the run stops with one `error:` line and leaves no partial
save). The final rerun still ends as the uninterrupted run.

The kills are spread over the work: during the evaluation before training, just after
random steps (a checkpoint is written every 4 steps, so some kills land in a write),
during the evaluation at step 16 and during the final one, each after a random delay
of up to 0.4 s past its marker.
JAXEMBED_FAULTS sets the number of kills (default 10). It takes about 3.5 minutes on
2 CPU cores, so the default test run leaves it out: `pytest -m faults tests`.
"""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_train, start_train_until, user_env

KILLS = int(os.environ.get("JAXEMBED_FAULTS", "10"))
STEPS = 48


def _args(workdir, tfds_dir):
  return ["--config=configs/minilm_wordnet_2d.py:smoke", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", f"--config.train.steps={STEPS}",
          "--config.train.checkpoint_every=4", "--config.train.log_every=1",
          "--config.train.eval_every=16"]


def _train_log(workdir):
  """(step, loss, learning rate, gradient norm) per logged step; the speed differs."""
  return [(r["step"], r["loss"], r["learning_rate"], r["grad_norm"]) for r in
          map(json.loads, open(os.path.join(workdir, "train_log.jsonl")))]


def _eval_log(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "eval_log.jsonl"))]


def _kill_at(args, marker: str, delay: float, err_path) -> tuple[bool, str]:
  """Runs until `marker` shows on stderr, waits `delay`, kills with SIGKILL.
  Returns (killed, the last line written)."""
  run = start_train_until(args, marker, err_path, timeout=300)
  if run.poll() is None:
    time.sleep(delay)
  killed = run.poll() is None
  if killed:
    run.send_signal(signal.SIGKILL)
  run.wait()
  lines = [l for l in open(err_path).read().splitlines() if l.strip()]
  return killed, lines[-1][-90:] if lines else "(start-up)"


@pytest.mark.slow
@pytest.mark.faults
def test_killed_at_random_moments_ends_as_if_never_killed(tmp_path, tfds_dir):
  reference = tmp_path / "reference"
  done = run_train(_args(reference, tfds_dir))
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = tmp_path / "killed"
  rng = random.Random(0)
  # The moments, in the order the work reaches them: the evaluation before training,
  # random steps (a checkpoint write follows every 4th), the evaluation at step 16,
  # and the final evaluation.
  n_steps = max(KILLS - 3, 0)
  markers = [(s, f"step {s}/{STEPS}") for s in rng.sample(range(1, STEPS), n_steps)]
  markers += [(0, "eval (before)"), (16.5, "eval (step 16)"), (STEPS + 1, "eval (after)")]
  markers = [m for _, m in sorted(markers)][:KILLS]
  moments = []
  for marker in markers:
    killed, last = _kill_at(_args(workdir, tfds_dir), marker, rng.uniform(0, 0.4),
                            tmp_path / "stderr.txt")
    moments.append((killed, f"after {marker!r}: {last}"))
  print(f"{sum(k for k, _ in moments)} of {KILLS} runs killed; the last line each wrote:\n  "
        + "\n  ".join(m for _, m in moments))
  assert sum(k for k, _ in moments) >= KILLS * 0.8, "most runs ended before their kill"
  _corrupt_latest_checkpoint(workdir)
  _fill_the_disk_during_a_save(workdir, tfds_dir)
  done = run_train(_args(workdir, tfds_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  assert (json.loads((workdir / "metrics.json").read_text())
          == json.loads((reference / "metrics.json").read_text()))
  assert _train_log(workdir) == _train_log(reference)
  assert _eval_log(workdir) == _eval_log(reference)


def _steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(p) for p in os.listdir(folder) if p.isdigit()) if os.path.isdir(
      folder) else []


def _corrupt_latest_checkpoint(workdir):
  steps = _steps(workdir)
  if not steps:
    return
  folder = os.path.join(workdir, "checkpoints", str(steps[-1]), "params")
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  victim = max(files, key=os.path.getsize)
  data = open(victim, "rb").read()
  open(victim, "wb").write(data[:len(data) // 2])


def _fill_the_disk_during_a_save(workdir, tfds_dir):
  """A rerun whose files may not grow past 1 MiB (as on a full disk): a checkpoint's
  arrays do not fit; the run stops with one error line and no partial step folder."""
  def small_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
  full = subprocess.run([sys.executable, "-m", "experiments.train",
                         *_args(workdir, tfds_dir)], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=user_env(), preexec_fn=small_files)
  assert full.returncode == 1, full.stderr[-3000:]
  errors = [l for l in full.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
  folder = os.path.join(workdir, "checkpoints")
  assert not [p for p in os.listdir(folder) if "tmp" in p], os.listdir(folder)
