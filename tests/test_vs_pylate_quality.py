"""experiments/vs_pylate_quality.py and its peer side experiments/pylate_peer.py:
the peer is given the optimiser jaxembed trains with (its schedule checked against
optax's at every step), the stacked vectors it writes come back text by text, a
missing peer is named, and the table's means and parity rows follow from the
per-query scores in results.json."""

import numpy as np
import pytest

from conftest import import_experiment


@pytest.fixture(scope="module")
def study():
  return import_experiment("vs_pylate_quality")


def test_the_peer_gets_the_config_s_optimiser_and_lengths(study):
  from experiments import pylate_peer
  from jaxembed.train.optim import make_schedule
  c = study.study_config(3, "")
  spec = study.peer_spec(c, "/m", "/o", "/b", "/t")
  assert spec["seed"] == 3 and spec["steps"] == c.train.steps == 400
  assert spec["dim"] == 128 and spec["query_length"] == 32
  assert spec["train_document_length"] == c.data.seq_len + 1
  assert spec["document_length"] == 180 and spec["temperature"] == 1.0
  optax_lr = make_schedule(c.optim, c.train.steps)
  for step in range(c.train.steps + 1):
    want = float(optax_lr(step))
    got = pylate_peer.schedule(step, spec["learning_rate"], spec["warmup_steps"],
                               spec["steps"])
    assert got == pytest.approx(want, rel=1e-5, abs=1e-12), step
  c.optim.schedule = "cosine"
  with pytest.raises(ValueError, match="cosine"):
    study.peer_spec(c, "/m", "/o", "/b", "/t")


def test_stacked_vectors_come_back_text_by_text(study):
  from experiments import pylate_peer
  rng = np.random.default_rng(0)
  vectors = [rng.normal(size=(int(n), 8)).astype(np.float32) for n in (3, 1, 7, 2)]
  stacked, lengths = pylate_peer.stacked(vectors)
  back = study.unstack(stacked, lengths)
  assert len(back) == 4
  for a, b in zip(vectors, back):
    np.testing.assert_array_equal(a, b)


def test_a_python_without_pylate_is_named(study, tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  done = subprocess.run([sys.executable, "-m", "experiments.vs_pylate_quality",
                         f"--out={tmp_path}", f"--peer_python={sys.executable}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert f"--peer_python={sys.executable!r} is not a Python with pylate" in done.stderr


def _results(rng, seeds=("1", "2"), queries=40):
  rr = {arm: {s: {n: {"full": rng.uniform(size=queries).round(6).tolist()}
                  for n in ("manpages", "wordnet")} for s in seeds}
        for arm in ("jaxembed", "pylate")}
  return {"k": 10, "rr": rr, "sets": ["manpages", "wordnet"], "machine": "a CPU",
          "settings": {"margin": 0.02}, "queries": {"manpages": queries, "wordnet": queries},
          "corpus": {"manpages": 99, "wordnet": 98}}


def test_the_table_is_made_from_the_per_query_scores(study):
  from jaxembed.evals import stats
  results = _results(np.random.default_rng(0))
  rr = results["rr"]
  md = study.table(results)
  for arm, column in (("jaxembed", 0), ("pylate", 1)):
    per_seed = [100 * np.mean(rr[arm][s]["manpages"]["full"]) for s in ("1", "2")]
    want = f"{np.mean(per_seed):.1f} ± {np.std(per_seed, ddof=1):.1f}"
    row = next(l for l in md.splitlines() if l.startswith("| man pages"))
    assert row.split(" | ")[1 + column].strip(" |") == want
  rows = list(stats.PARITY_ROW.finditer(md))
  assert len(rows) == 2
  a = np.array([rr["pylate"][s]["manpages"]["full"] for s in ("1", "2")])
  b = np.array([rr["jaxembed"][s]["manpages"]["full"] for s in ("1", "2")])
  assert float(rows[0]["mean"]) == round(100 * (b - a).mean(), 1)
  for m in rows:
    interval = stats.Interval(float(m["mean"]), float(m["low"]), float(m["high"]))
    assert stats.parity(interval, 2.0) == m["verdict"]
  assert "Training throughput" not in md          # no rates stored: no line
  results["pairs_per_s"] = {"jaxembed": {"1": 40.0, "2": 44.0}, "pylate": {"1": 20.0,
                                                                           "2": 30.0}}
  assert "pairs/s (seeds 1, 2): jaxembed 40.0 / 44.0 (its logged steps), PyLate " \
      "20.0 / 30.0 (its" in study.table(results)
  # a seed PyLate has not finished stays out of the tables and is named
  del rr["pylate"]["2"]
  md = study.table(results)
  assert "seed 1;" in md and "Seeds not in the tables yet (some arm unfinished): 2." in md


def test_the_logged_rate_leaves_out_the_compiling_step(study, tmp_path):
  import json
  rates = [3.0, 40.0, 50.0, None, 44.0]
  with open(tmp_path / "train_log.jsonl", "w") as f:
    for i, r in enumerate(rates):
      f.write(json.dumps({"step": i, **({"examples_per_sec": r} if r else {})}) + "\n")
  assert study.logged_rate(str(tmp_path)) == 44.0
