"""Retrieval and STS metrics against slow, obvious implementations."""

import math

import numpy as np
import pytest
import scipy.stats

from jaxembed.evals.retrieval import dense_retrieval_metrics
from jaxembed.evals.sts import pearson, spearman
from jaxembed.evals.tasks import RetrievalTask


def slow_metrics(scores, rel, k):
  ndcgs, mrrs, recalls = [], [], []
  for q in range(scores.shape[0]):
    docs = sorted(range(scores.shape[1]), key=lambda d: (-scores[q, d], d))[:k]
    dcg = sum(rel[q, d] / math.log2(i + 2) for i, d in enumerate(docs))
    ideal = sorted(rel[q], reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    ndcgs.append(dcg / idcg if idcg else 0.0)
    first = next((i for i, d in enumerate(docs) if rel[q, d] > 0), None)
    mrrs.append(0.0 if first is None else 1.0 / (first + 1))
    n_rel = sum(1 for r in rel[q] if r > 0)
    recalls.append(sum(1 for d in docs if rel[q, d] > 0) / n_rel if n_rel else 0.0)
  return {f"ndcg_at_{k}": np.mean(ndcgs), f"mrr_at_{k}": np.mean(mrrs),
          f"recall_at_{k}": np.mean(recalls)}


@pytest.mark.parametrize("k", [1, 3, 10])
def test_retrieval_metrics_match_slow_loop(k):
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(30, 25)).astype(float)  # many ties
  rel = rng.integers(0, 3, size=(30, 25)) * (rng.random((30, 25)) < 0.15)
  rel[0] = 0  # a query without relevant documents
  got = dense_retrieval_metrics(scores, rel, k)
  want = slow_metrics(scores, rel, k)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-12), name


def test_spearman_matches_rank_correlation_by_hand():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 5, 40).astype(float)
  y = x + rng.normal(size=40)
  rx, ry = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
  want = np.corrcoef(rx, ry)[0, 1]
  assert spearman(x, y) == pytest.approx(want, abs=1e-12)
  # scipy's own rho and r, with ties on both sides, and NaN for a constant side
  z = np.round(y)
  assert spearman(x, z) == pytest.approx(scipy.stats.spearmanr(x, z).statistic, abs=1e-12)
  assert pearson(y, z) == pytest.approx(scipy.stats.pearsonr(y, z).statistic, abs=1e-12)
  assert np.isnan(spearman(x, np.ones(40)))


def test_retrieval_task_from_pairs():
  pairs = [dict(anchor="q1", positive="a"), dict(anchor="q1", positive="b"),
           dict(anchor="q2", positive="c"), dict(anchor="q3", positive="d")]
  task = RetrievalTask.from_pairs("t", pairs, max_queries=2)
  assert task.queries == ["q1", "q2"] and task.corpus == ["a", "b", "c"]
  np.testing.assert_array_equal(task.relevance, [[1, 1, 0], [0, 0, 1]])
  # Perfect vectors: each query equals the mean of its documents.
  vecs = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]], float)
  m = task.score(vecs)
  assert m["ndcg_at_10"] == pytest.approx(1.0) and m["mrr_at_10"] == pytest.approx(1.0)


def test_ndcg_with_fewer_retrieved_than_relevant():
  """2 documents retrieved, 3 relevant: the ideal DCG still counts all 3 (trec_eval)."""
  from jaxembed.evals.retrieval import ndcg_at_k
  got = ndcg_at_k(np.array([[1, 0]]), [np.array([1, 1, 1])], 10)
  ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
  np.testing.assert_allclose(got, [1 / ideal])


def test_heatmap_digits_contrast_with_their_cell():
  """Digits are black on light cells and white on dark ones (WCAG luminance), for the
  colour maps the heatmaps use, and each metric gets its own figure."""
  import matplotlib
  from jaxembed.evals.grid import heatmaps, text_color
  viridis, rdbu = matplotlib.colormaps["viridis"], matplotlib.colormaps["RdBu"]
  assert text_color(viridis(0.0)) == "w" and text_color(viridis(1.0)) == "k"
  assert text_color(rdbu(0.0)) == "w" and text_color(rdbu(0.5)) == "k"
  assert text_color(rdbu(1.0)) == "w"
  for rgba in [viridis(x) for x in np.linspace(0, 1, 21)]:
    # the chosen colour has the larger WCAG contrast ratio with the cell
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    black, white = (lum + 0.05) / 0.05, 1.05 / (lum + 0.05)
    assert text_color(rgba) == ("k" if black > white else "w")
  rows = [{"layer": l, "dim": d, "a/x": l * d / 100, "b/y": 0.5}
          for l in (1, 2, 3) for d in (8, 16)]
  figs = heatmaps(rows, rows)
  assert list(figs) == ["a/x", "b/y"]
  png, rgb = figs["a/x"]
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and rgb.ndim == 3 and rgb.shape[2] == 3
  assert rgb.shape[0] < 2 * rgb.shape[1]               # one metric: wider than tall
