"""Multi-host for real: two processes joined by jax.distributed on 127.0.0.1 with gloo
CPU collectives train exactly as one process does, and their checkpoint loads in one."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxembed
from conftest import REPO, run_train, xla_flags

pytestmark = pytest.mark.slow


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def losses(workdir):
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    return np.array([json.loads(l)["loss"] for l in f])


def test_two_processes_match_one(tmp_path, tfds_dir):
  common = ["--config=configs/minilm_wordnet_2d.py:smoke", f"--config.data.tfds_dir={tfds_dir}",
            "--config.train.log_every=1", "--config.eval.before=False"]
  multi = tmp_path / "multi"
  port = free_port()
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", *common, f"--workdir={multi}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2; 2 local of 4 global devices" in outs[1]

  single = tmp_path / "single"
  done = run_train(common + [f"--workdir={single}"],
                   env={"XLA_FLAGS": xla_flags(4)})
  assert done.returncode == 0, done.stderr[-3000:]

  a, b = losses(multi), losses(single)
  assert len(a) == len(b) == 24
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Only process 0 wrote the log: one line per step, not two.
  assert sorted(json.loads(l)["step"] for l in open(multi / "train_log.jsonl")) == list(
      range(1, 25))

  # The two-process checkpoint restores in this single process. Parameters agree to
  # float32 reduction-order noise (Adam divides tiny gradients by their own scale, so
  # the differences are absolute, ~1e-6, not relative).
  m, s = jaxembed.load(str(multi)), jaxembed.load(str(single))
  for x, y in zip(jax.tree.leaves(m.params), jax.tree.leaves(s.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5)
