"""experiments/limit_trained.py (LIMIT-small with trained models): per-query recall@k
checked by a slow loop, and the table's means and verdict rows made from the stored
per-query recalls (an untrained arm's scores paired with every seed)."""

import numpy as np
import pytest

from conftest import import_experiment


@pytest.fixture(scope="module")
def study():
  return import_experiment("limit_trained")


def test_per_query_recall_is_the_share_of_relevant_documents_in_the_top_k(study):
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(30, 46))
  rel = np.zeros((30, 46), np.int32)
  for i in range(30):
    rel[i, rng.choice(46, size=2 if i % 3 else 1, replace=False)] = 1
  got = study.per_query_recall(scores, rel)
  for k in study.KS:
    for i in range(30):
      ranked = sorted(range(46), key=lambda j: -scores[i, j])[:k]
      want = sum(rel[i, j] for j in ranked) / rel[i].sum()
      assert got[str(k)][i] == pytest.approx(want, abs=1e-6), (k, i)


def test_the_table_is_made_from_the_per_query_recalls(study):
  from jaxembed.evals import stats
  rng = np.random.default_rng(1)
  q = 50
  draw = lambda: {str(k): rng.uniform(size=q).round(6).tolist() for k in study.KS}  # noqa: E731
  results = {"queries": q, "documents": 46, "machine": "a CPU",
             "recall": {"bm25": draw(), "pretrained": draw(),
                        "single": {"1": draw(), "2": draw()},
                        "multi": {"1": draw(), "2": draw()}}}
  md = study.table(results)
  rr = results["recall"]
  per_seed = [100 * np.mean(rr["multi"][s]["10"]) for s in ("1", "2")]
  row = next(l for l in md.splitlines() if l.startswith("| multi-vector"))
  assert row.split(" | ")[2] == f"{np.mean(per_seed):.1f} ± {np.std(per_seed, ddof=1):.1f}"
  rows = list(stats.ROW.finditer(md))
  assert len(rows) == 6
  bm25 = np.array([rr["bm25"]["2"]] * 2)
  single = np.array([rr["single"][s]["2"] for s in ("1", "2")])
  got = next(m for m in rows if m["name"] == "bm25 − single, recall@2")
  assert float(got["mean"]) == round(100 * (bm25 - single).mean(), 1)
  del rr["multi"]["2"]
  md = study.table(results)
  assert "seed 1;" in md and "Seeds not in the tables yet (some arm unfinished): 2." in md
