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
