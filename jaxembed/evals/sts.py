"""Semantic textual similarity: rank correlation of cosine scores with human ratings."""

from __future__ import annotations

import numpy as np
import scipy.stats


def spearman(pred, gold) -> float:
  """Spearman's rho with average ranks for ties (as scipy and MTEB compute it)."""
  return float(scipy.stats.spearmanr(np.asarray(pred), np.asarray(gold)).statistic)


def pearson(pred, gold) -> float:
  return float(scipy.stats.pearsonr(np.asarray(pred), np.asarray(gold)).statistic)


def cosine_rows(a, b):
  """Row-wise cosine of two [n, d] arrays."""
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=-1)
