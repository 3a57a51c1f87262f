"""The pooling and attention study (experiments/pooling_study.py) end to end on a tiny
random decoder: every arm trains (its loss falls), is scored on every evaluation set,
the table is made from results.json, and a second call resumes without retraining."""

import json
import os
import subprocess
import sys

from conftest import REPO

ARGS = ["--smoke", "--attention=causal,bidirectional", "--pooling=mean,latent,multilayer",
        "--seeds=0", "--steps=30", "--train_pairs=256", "--batch=16", "--seq_len=16"]


def run(out):
  done = subprocess.run([sys.executable, "-m", "experiments.pooling_study", f"--out={out}",
                         *ARGS], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(out, "results.json")) as f:
    return json.load(f), done.stderr


def test_pooling_study_smoke(tmp_path):
  results, _ = run(tmp_path)
  runs = results["runs"]
  expected = {f"{a}/{k}" for a in ("causal", "bidirectional")
              for k in ("zero_shot_last_token", "zero_shot_mean", "mean_s0", "latent_s0",
                        "multilayer_s0")}
  assert set(runs) == expected
  for key, r in runs.items():
    assert r["after"] and all(-1.0 <= v <= 1.0 for v in r["after"].values()), key
    if r["seed"] is not None:
      assert r["loss_last"] < r["loss_first"], key
  # bidirectional attention changes the frozen states, so the untrained vectors differ
  assert runs["causal/zero_shot_mean"]["after"] != runs["bidirectional/zero_shot_mean"]["after"]
  table = (tmp_path / "table.md").read_text()
  assert "| bidirectional | latent |" in table and "| causal | zero-shot mean |" in table
  again, log = run(tmp_path)         # everything is in results.json: nothing retrains
  assert again["runs"] == runs and "texts to encode" not in log
