"""Relative representations (Moschella et al. 2023, "Relative representations enable
zero-shot latent space communication"): each sample is represented by its cosine
similarities to a fixed set of anchor samples, embedded by the same encoder. Two
encoders trained apart give different absolute spaces (rotations, rescalings, other
coordinates), but similar relative ones, so a classifier trained on one encoder's
relative features can be used on another's ("zero-shot stitching")."""

from __future__ import annotations

import numpy as np

from jaxembed.evals.classification import unit_rows


def relative(x, anchors) -> np.ndarray:
  """[n, a] cosines of each row of x [n, d] with each anchor [a, d]."""
  return unit_rows(x) @ unit_rows(anchors).T


def cross_space_retrieval(source, target, queries, k: int = 10) -> dict:
  """How well word i's vector in the source space finds word i in the target space
  (row i of source and of target [n, d] is the same word; the paper's word-embedding
  table). For each query row i, by cosine among the target's n rows:
    mrr: 1 / rank of target row i when searched with source row i;
    jaccard: |A & B| / |A | B| of the top-k target rows searched with source row i (A)
      and with target row i itself (B; row i included);
    cosine: cos(source row i, target row i).
  Means over `queries` (row indices)."""
  src, tgt = unit_rows(source), unit_rows(target)
  queries = np.asarray(queries)
  cross = src[queries] @ tgt.T                         # [q, n]
  own = tgt[queries] @ tgt.T
  true = cross[np.arange(len(queries)), queries]
  rank = 1 + np.sum(cross > true[:, None], axis=1)
  top_cross = np.argsort(-cross, axis=1, kind="stable")[:, :k]
  top_own = np.argsort(-own, axis=1, kind="stable")[:, :k]
  jaccard = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(top_cross, top_own)]
  return {"mrr": float(np.mean(1.0 / rank)), "jaccard": float(np.mean(jaccard)),
          "cosine": float(np.mean(true))}
