"""Retrieval metrics over a dense score matrix, with graded relevance.

Definitions follow trec_eval: DCG@k = sum_{i<=k} rel_i / log2(i + 1) with linear gain,
nDCG@k divides by the DCG of the ideal ranking of all judged documents; MRR@k is the
reciprocal rank of the first relevant document within the top k (0 if none); ties in
score are broken by the lower document index.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k best documents per query, best first, ties -> lower index: the
  first k of a stable argsort of -scores, found without sorting whole rows."""
  k = min(k, scores.shape[1])
  if k == 1:
    return np.argmax(scores, axis=1)[:, None]      # the first maximum: the lower index
  kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]      # the k-th best per row
  out = np.empty((len(scores), k), np.int64)
  for r, (row, bound) in enumerate(zip(scores, kth)):
    idx = np.flatnonzero(row >= bound)                        # every tie at the boundary
    out[r] = idx[np.lexsort((idx, -row[idx]))][:k]
  return out


def ndcg_at_k(ranked_rel: np.ndarray, all_rel: list[np.ndarray], k: int) -> np.ndarray:
  """ranked_rel: [Q, >=k] relevance of the retrieved documents in rank order;
  all_rel: per query, the relevance grades of all its judged documents."""
  ranked_rel = ranked_rel[:, :k].astype(np.float64)
  # k discounts: fewer than k retrieved documents must not cut the ideal ranking short
  discounts = 1.0 / np.log2(np.arange(2, k + 2))
  dcg = ranked_rel @ discounts[:ranked_rel.shape[1]]
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
  return {f"ndcg_at_{k}": float(ndcg_at_k(ranked, all_rel, k).mean()),
          f"mrr_at_{k}": float(mrr_at_k(ranked, k).mean()),
          f"recall_at_{k}": float(recall.mean())}


# ------------------------------------------------------------ trec_eval-style, by dict

def _parse_metric(name: str) -> tuple[str, int | None]:
  """'ndcg_cut_10' / 'ndcg_cut.10' -> ('ndcg_cut', 10); 'recip_rank' -> (.., None)."""
  base, sep, k = name.replace(".", "_").rpartition("_")
  if sep and k.isdigit() and base in ("ndcg_cut", "recall", "map_cut", "P"):
    return base, int(k)
  if name in ("recip_rank", "map", "ndcg"):
    return name, None
  raise ValueError(f"metric {name!r} is not supported; use ndcg_cut_K, recall_K, "
                   "map_cut_K, P_K, recip_rank, map or ndcg")


def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
             metrics) -> dict[str, dict[str, float]]:
  """Per-query metrics with pytrec_eval's conventions and dict shapes.

  qrels {qid: {docid: relevance}}, run {qid: {docid: score}}; metric names as
  pytrec_eval reports them ("ndcg_cut_10", "recip_rank", "recall_100", "map_cut_10",
  "P_5", "map", "ndcg"). As trec_eval: only queries present in both are scored; the
  ranking is by score descending, ties broken by docid descending; relevance > 0 is
  relevant; nDCG uses linear gains and the ideal ranking of all judged documents.
  Returns {qid: {metric: value}}.
  """
  parsed = {m: _parse_metric(m) for m in metrics}
  out = {}
  for qid in sorted(set(qrels) & set(run)):
    judged = qrels[qid]
    ranking = sorted(run[qid].items(), key=lambda x: (x[1], x[0]), reverse=True)
    gains = [max(judged.get(doc, 0), 0) for doc, _ in ranking]
    relevant = [g > 0 for g in gains]
    n_rel = sum(1 for v in judged.values() if v > 0)
    ideal = sorted((v for v in judged.values() if v > 0), reverse=True)

    def dcg(values, k=None):
      values = values if k is None else values[:k]
      return sum(g / np.log2(i + 2) for i, g in enumerate(values))

    def average_precision(k=None):
      hits, total = 0, 0.0
      for i, r in enumerate(relevant if k is None else relevant[:k]):
        if r:
          hits += 1
          total += hits / (i + 1)
      return total / n_rel if n_rel else 0.0

    row = {}
    for name, (kind, k) in parsed.items():
      if kind in ("ndcg_cut", "ndcg"):
        idcg = dcg(ideal, k)
        row[name] = dcg(gains, k) / idcg if idcg > 0 else 0.0
      elif kind == "recall":
        row[name] = sum(relevant[:k]) / n_rel if n_rel else 0.0
      elif kind == "P":
        row[name] = sum(relevant[:k]) / k
      elif kind in ("map_cut", "map"):
        row[name] = average_precision(k)
      else:  # recip_rank
        first = next((i for i, r in enumerate(relevant) if r), None)
        row[name] = 0.0 if first is None else 1.0 / (first + 1)
    out[qid] = row
  return out
