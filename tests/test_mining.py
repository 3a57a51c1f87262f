"""Hard-negative mining: the blockwise top-k, the window and margin rules, the JSONL
format's errors, and mining then training on WordNet end to end."""

import json
import os
import re

import numpy as np
import pytest

from conftest import run_train
from jaxembed import mining
from jaxembed.evals.search import exact_search

pytestmark = pytest.mark.slow


def test_exact_search_as_the_miner_uses_it_matches_full_sort():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(7, 5)).astype(np.float32)
  c = np.round(rng.normal(size=(23, 5)), 1).astype(np.float32)
  c[10] = c[3]  # a tie: the lower index must come first
  scores, ids = exact_search(q, c, k=6, block=4)
  full = q @ c.T
  for i in range(7):
    want = sorted(range(23), key=lambda j: (-full[i, j], j))[:6]
    assert list(ids[i]) == want
    np.testing.assert_allclose(scores[i], full[i, want], rtol=1e-6)


class TableModel:
  """encode() from a fixed table of unit vectors: a model whose scores we know."""

  def __init__(self, table):
    self.table = table

  def encode(self, texts, **kw):
    del kw
    return np.stack([self.table[t] for t in texts])


def test_mine_keeps_the_window_and_the_margin():
  rng = np.random.default_rng(1)
  texts = [f"t{i}" for i in range(60)]
  vecs = rng.normal(size=(60, 4))
  table = dict(zip(texts, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)))
  pairs = [{"anchor": texts[i], "positive": texts[i + 30]} for i in range(30)]
  res = mining.mine(TableModel(table), pairs, num_negatives=2, window=(2, 12), margin=0.05)
  assert len(res.records) + res.dropped == 30 and len(res.records) > 5
  corpus = [p["positive"] for p in pairs]
  for rec, pos, negs in zip(res.records, res.positive_scores, res.negative_scores):
    a = table[rec["anchor"]]
    ranked = sorted(corpus, key=lambda t: -float(a @ table[t]))
    for text, score in zip(rec["negatives"], negs):
      assert 2 <= ranked.index(text) < 12
      assert score <= pos - 0.05 + 1e-6 and text != rec["positive"]
      assert score == pytest.approx(float(a @ table[text]), abs=1e-6)


def test_mine_wordnet_then_train_on_it(tmp_path, tfds_dir):
  import subprocess
  import sys
  from conftest import REPO
  out = tmp_path / "mined.jsonl"
  mined = subprocess.run(
      [sys.executable, "-m", "experiments.mine", f"--out={out}", "--max_pairs=400",
       "--window=2,30", f"--config.data.tfds_dir={tfds_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert mined.returncode == 0, mined.stderr[-3000:]
  gaps = re.search(r"random negatives ([\d.-]+), mined negatives ([\d.-]+)", mined.stdout)
  random_gap, mined_gap = float(gaps.group(1)), float(gaps.group(2))
  assert mined_gap < random_gap  # mined negatives sit closer to the positive
  rows = [json.loads(l) for l in open(out)]
  assert len(rows) > 100 and all(len(r["negatives"]) == 1 for r in rows)

  workdir = tmp_path / "run"
  done = run_train(["--config=configs/minilm_wordnet_mined.py:smoke", f"--workdir={workdir}",
                    f"--config.data.train_file={out}", f"--config.data.tfds_dir={tfds_dir}",
                    "--config.train.steps=6", "--config.eval.before=False"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert os.path.exists(workdir / "metrics.json")
