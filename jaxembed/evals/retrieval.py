"""Retrieval metrics over a dense score matrix, with graded relevance.

Definitions follow trec_eval: DCG@k = sum_{i<=k} rel_i / log2(i + 1) with linear gain,
nDCG@k divides by the DCG of the ideal ranking of all judged documents; MRR@k is the
reciprocal rank of the first relevant document within the top k (0 if none); ties in
score are broken by the lower document index.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k best documents per query, best first, ties -> lower index."""
  k = min(k, scores.shape[1])
  # A stable sort on -score keeps the lower index first among equal scores.
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def ndcg_at_k(ranked_rel: np.ndarray, all_rel: list[np.ndarray], k: int) -> np.ndarray:
  """ranked_rel: [Q, >=k] relevance of the retrieved documents in rank order;
  all_rel: per query, the relevance grades of all its judged documents."""
  ranked_rel = ranked_rel[:, :k].astype(np.float64)
  discounts = 1.0 / np.log2(np.arange(2, ranked_rel.shape[1] + 2))
  dcg = ranked_rel @ discounts
  out = np.zeros(len(all_rel))
  for q, rel in enumerate(all_rel):
    ideal = np.sort(np.asarray(rel, np.float64))[::-1][:k]
    idcg = float(ideal @ discounts[:len(ideal)])
    out[q] = dcg[q] / idcg if idcg > 0 else 0.0
  return out


def mrr_at_k(ranked_rel: np.ndarray, k: int) -> np.ndarray:
  hits = ranked_rel[:, :k] > 0
  first = np.argmax(hits, axis=1)
  return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def dense_retrieval_metrics(scores: np.ndarray, relevance: np.ndarray,
                            k: int = 10) -> dict[str, float]:
  """Mean nDCG@k, MRR@k and Recall@k for a [Q, D] score and relevance matrix."""
  idx = top_k(scores, k)
  ranked = np.take_along_axis(relevance, idx, axis=1)
  all_rel = [row[row > 0] for row in relevance]
  n_rel = np.array([len(r) for r in all_rel])
  recall = np.where(n_rel > 0, (ranked > 0).sum(1) / np.maximum(n_rel, 1), 0.0)
  return {f"ndcg@{k}": float(ndcg_at_k(ranked, all_rel, k).mean()),
          f"mrr@{k}": float(mrr_at_k(ranked, k).mean()),
          f"recall@{k}": float(recall.mean())}
