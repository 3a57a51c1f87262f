"""Semantic textual similarity: rank correlation of cosine scores with human ratings."""

from __future__ import annotations

import numpy as np

# NumPy only: scipy.stats would add one to two seconds to the start of every run that
# evaluates a similarity set.


def average_ranks(x) -> np.ndarray:
  """Ranks 1..n of `x`, tied values sharing their average rank (scipy's rankdata)."""
  values, inverse, counts = np.unique(np.asarray(x, np.float64).ravel(),
                                      return_inverse=True, return_counts=True)
  first = np.cumsum(counts) - counts          # 0-based rank of each value's first copy
  return (first + (counts + 1) / 2.0)[inverse]


def pearson(pred, gold) -> float:
  """Pearson's r in float64; NaN where either side is constant (as scipy returns)."""
  x = np.asarray(pred, np.float64).ravel()
  y = np.asarray(gold, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"pearson: {x.size} predictions for {y.size} ratings")
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(pred, gold) -> float:
  """Spearman's rho with average ranks for ties (as scipy and MTEB compute it)."""
  return pearson(average_ranks(pred), average_ranks(gold))


def cosine_rows(a, b):
  """Row-wise cosine of two [n, d] arrays."""
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=-1)
