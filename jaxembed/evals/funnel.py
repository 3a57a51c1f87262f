"""Matryoshka adaptive retrieval (Kusupati et al., 2022, section 4.3): shortlist the
corpus with a small prefix of each embedding, then rerank the shortlist with longer
prefixes ("funnel": a cascade of growing dims over shrinking shortlists).

Cost is counted as multiply-adds x 2 per query: a stage that scores `n` documents at
dim `d` costs 2*n*d FLOPs. The index holds float32 vectors at the largest dim used.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxembed.evals.retrieval import top_k
from jaxembed.evals.search import exact_search


def prefix(vecs: np.ndarray, dim: int) -> np.ndarray:
  """The first `dim` coordinates, renormalised (cosine at that dim)."""
  v = vecs[:, :dim]
  return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class Stage:
  dim: int      # prefix length scored at this stage
  keep: int     # candidates kept after it (the last stage's keep is the final k)


def funnel_search(queries: np.ndarray, corpus: np.ndarray, stages: Sequence[Stage], *,
                  mesh=None) -> tuple[np.ndarray, float]:
  """Returns (indices [Q, stages[-1].keep] best first, FLOPs per query).

  `queries`, `corpus`: full-width vectors (any norm). Stage 1 searches the whole
  corpus exactly (blockwise, optionally sharded over `mesh`); every later stage
  rescores only the previous stage's candidates. Ties go to the lower corpus index.
  """
  if not stages:
    raise ValueError("funnel_search needs at least one stage")
  for a, b in zip(stages, stages[1:]):
    if b.keep > a.keep:
      raise ValueError(f"stage keeps must shrink: {a.keep} then {b.keep}")
  n = corpus.shape[0]
  first = stages[0]
  _, cand = exact_search(prefix(queries, first.dim).astype(np.float32),
                         prefix(corpus, first.dim).astype(np.float32),
                         min(first.keep, n), mesh=mesh)
  flops = 2.0 * n * first.dim
  for stage in stages[1:]:
    q = prefix(queries, stage.dim)
    d = prefix(corpus, stage.dim)
    scores = np.einsum("qd,qkd->qk", q, d[cand])
    flops += 2.0 * cand.shape[1] * stage.dim
    # among equal scores the earlier (better-ranked) candidate first
    cand = np.take_along_axis(cand, top_k(scores, stage.keep), axis=1)
  return cand, flops


def index_bytes(num_docs: int, stages: Sequence[Stage], bytes_per_value: int = 4) -> int:
  """Float32 index holding each document's largest prefix any stage reads."""
  return num_docs * max(s.dim for s in stages) * bytes_per_value
