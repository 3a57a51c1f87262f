"""A run stopped by SIGTERM and restarted with the same command ends exactly where an
uninterrupted run of the same seed ends (parameters and metrics)."""

import json
import os

import numpy as np
import pytest

import jaxembed
from conftest import logged_steps, run_train, sigterm_after_step

pytestmark = pytest.mark.slow

CONFIG = "--config=configs/minilm_wordnet_2d.py:smoke"
# Enough steps that the signal lands mid-training; checkpoints every 50 steps, so the
# stop step is (almost surely) not a regular checkpoint.
EXTRA = ["--config.train.steps=240", "--config.train.checkpoint_every=50",
         "--config.train.log_every=1", "--config.optim.warmup_steps=10"]


def args(workdir, tfds_dir):
  return [CONFIG, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}", *EXTRA]


def test_sigterm_then_resume_matches_uninterrupted(tmp_path, tfds_dir):
  straight = tmp_path / "straight"
  done = run_train(args(straight, tfds_dir))
  assert done.returncode == 0, done.stderr[-3000:]

  resumed = tmp_path / "resumed"
  code, out = sigterm_after_step(args(resumed, tfds_dir), resumed, 20)
  assert code == 0, out[-3000:]
  stopped_at = max(logged_steps(resumed))
  assert 20 <= stopped_at < 240, f"signal did not land mid-training: {stopped_at}"
  ckpts = sorted(int(p) for p in os.listdir(resumed / "checkpoints") if p.isdigit())
  assert ckpts[-1] == stopped_at, (ckpts, stopped_at)
  assert not (resumed / "metrics.json").exists()

  again = run_train(args(resumed, tfds_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from" in again.stderr
  assert logged_steps(resumed) == list(range(1, 241)), "log must read as one run"
  # TensorBoard too: each training scalar once per step (the interrupted run's points
  # past its checkpoint are purged, not shown twice).
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(resumed / "tensorboard"))
  acc.Reload()
  loss_tag = next(t for t in acc.Tags()["scalars"] if t.startswith("train/loss"))
  assert [e.step for e in acc.Scalars(loss_tag)] == list(range(1, 241))

  with open(straight / "metrics.json") as f:
    m_straight = json.load(f)
  with open(resumed / "metrics.json") as f:
    m_resumed = json.load(f)
  assert m_straight == m_resumed

  texts = ["a dog barks", "the committee postponed the vote", "unicode: café"]
  a = jaxembed.load(str(straight))
  b = jaxembed.load(str(resumed))
  import jax
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(a.encode(texts, layer=1, dim=16), b.encode(texts, layer=1, dim=16))

  # Rerunning a finished run trains no further and reports the same grid.
  third = run_train(args(resumed, tfds_dir))
  assert third.returncode == 0, third.stderr[-3000:]
  assert logged_steps(resumed) == list(range(1, 241))


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, tfds_dir,
                                                                  damage):
  """The latest checkpoint's largest file cut in half (or a run of its bytes flipped):
  the rerun reports it in one line, sets it aside, resumes from the checkpoint before
  it and ends where the undamaged run ended; jaxembed.load names the bad checkpoint."""
  work = tmp_path / "run"
  extra = ["--config.train.steps=30", "--config.train.checkpoint_every=20",
           "--config.eval.before=False", "--config.train.log_every=1"]
  config = "configs/ood_ablation.py:smoke,arm=pairs"
  from conftest import smoke_args
  first = run_train(smoke_args(work, tfds_dir, *extra, config=config))
  assert first.returncode == 0, first.stderr[-3000:]
  assert sorted(int(p) for p in os.listdir(work / "checkpoints") if p.isdigit()) == [20, 30]
  want = jaxembed.load(str(work))
  metrics = json.loads((work / "metrics.json").read_text())

  victim = _largest_file(work / "checkpoints" / "30" / "params")
  data = bytearray(open(victim, "rb").read())
  if damage == "truncate":
    data = data[:len(data) // 2]
  else:
    for i in range(len(data) // 3, len(data) // 3 + 64):
      data[i] ^= 0xFF
  open(victim, "wb").write(bytes(data))
  from jaxembed.errors import ModelLoadError
  with pytest.raises(ModelLoadError, match=r"checkpoints/30: the checkpoint cannot be "
                                           r"read .*older checkpoints: \[20\]"):
    jaxembed.load(str(work))

  again = run_train(smoke_args(work, tfds_dir, *extra, config=config))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Traceback" not in again.stderr
  reported = [l for l in again.stderr.splitlines() if "checkpoint 30 cannot be read" in l]
  assert len(reported) == 1 and len(reported[0]) < 600, again.stderr[-3000:]
  assert "resuming from" in again.stderr and "/20" in again.stderr
  assert os.path.isdir(work / "corrupt_checkpoints" / "30")
  assert logged_steps(work) == list(range(1, 31))
  assert json.loads((work / "metrics.json").read_text()) == metrics
  got = jaxembed.load(str(work))
  import jax
  for x, y in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
