"""MUVERA fixed-dimensional encodings (Dhulipala et al., 2024) of token multi-vectors.

Each repetition draws `num_simhash` Gaussian directions; a token's sign bits against
them pick one of 2^num_simhash buckets. A query's encoding sums its (optionally
projected) token vectors per bucket; a document's averages them, and a bucket no
document token fell into is filled with the token whose bits are nearest in Hamming
distance to the bucket's. Buckets and repetitions are concatenated; an optional
Count-Sketch projection shrinks the result. <FDE(q), FDE(d)> approximates the Chamfer
(MaxSim) similarity sum_i max_j <q_i, d_j>, so candidates found by single-vector search
are reranked by exact MaxSim.

Buckets are indexed here by the plain binary value of the bits; the reference
implementation (google/graph-mining) numbers them by Gray code, which only permutes
the buckets (the same permutation for queries and documents), so inner products are
unchanged. The inner projection is the AMS sketch: a random +-1 matrix / sqrt(d_proj).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxembed.evals.retrieval import top_k


@dataclasses.dataclass(frozen=True)
class FDEConfig:
  dim: int                          # token vector width
  num_repetitions: int = 10
  num_simhash: int = 4              # 2^k buckets per repetition
  projection_dim: int | None = None  # AMS inner projection (None: keep dim)
  final_dim: int | None = None       # Count-Sketch of the concatenation (None: none)
  fill_empty: bool = True            # documents only
  seed: int = 0

  @property
  def output_dim(self) -> int:
    inner = self.projection_dim or self.dim
    return self.final_dim or self.num_repetitions * (2 ** self.num_simhash) * inner


@dataclasses.dataclass(frozen=True)
class _Repetition:
  gaussians: np.ndarray             # [dim, k]
  projection: np.ndarray | None     # [dim, d_proj]


def _repetitions(cfg: FDEConfig) -> list[_Repetition]:
  reps = []
  for r in range(cfg.num_repetitions):
    rng = np.random.default_rng([cfg.seed, r])
    g = rng.standard_normal((cfg.dim, cfg.num_simhash))
    proj = None
    if cfg.projection_dim:
      proj = rng.choice([-1.0, 1.0], size=(cfg.dim, cfg.projection_dim)) / np.sqrt(
          cfg.projection_dim)
    reps.append(_Repetition(g, proj))
  return reps


def count_sketch(vec: np.ndarray, final_dim: int, seed) -> np.ndarray:
  """out[h(i)] += s(i) * vec[i], h uniform over final_dim, s = +-1: inner products are
  preserved in expectation over (h, s)."""
  rng = np.random.default_rng(seed)
  index = rng.integers(0, final_dim, size=len(vec))
  sign = rng.choice([-1.0, 1.0], size=len(vec))
  return np.bincount(index, weights=sign * vec, minlength=final_dim)


def _codes(tokens: np.ndarray, g: np.ndarray) -> np.ndarray:
  bits = (tokens @ g > 0).astype(np.int64)                     # [n, k]
  return bits @ (1 << np.arange(g.shape[1] - 1, -1, -1))        # first bit = high bit


def _encode_one(tokens: np.ndarray, cfg: FDEConfig, reps, is_query: bool) -> np.ndarray:
  buckets = 2 ** cfg.num_simhash
  parts = []
  for rep in reps:
    codes = _codes(tokens, rep.gaussians)
    x = tokens @ rep.projection if rep.projection is not None else tokens
    out = np.zeros((buckets, x.shape[1]))
    np.add.at(out, codes, x)
    if not is_query:
      counts = np.bincount(codes, minlength=buckets)
      out /= np.maximum(counts, 1)[:, None]
      if cfg.fill_empty and len(tokens):
        empty = np.flatnonzero(counts == 0)
        if len(empty):
          dist = np.bitwise_count(empty[:, None] ^ codes[None, :])   # [empty, n]
          out[empty] = x[np.argmin(dist, axis=1)]                   # ties: first token
    parts.append(out.reshape(-1))
  fde = np.concatenate(parts)
  if cfg.final_dim:
    fde = count_sketch(fde, cfg.final_dim, [cfg.seed, 1 << 20])
  return fde


def encode(multivectors: Sequence[np.ndarray], cfg: FDEConfig, *,
           is_query: bool) -> np.ndarray:
  """[len(multivectors), cfg.output_dim] float32 encodings; each item is [n_i, dim]."""
  reps = _repetitions(cfg)
  return np.stack([_encode_one(np.asarray(t, np.float64), cfg, reps, is_query)
                   for t in multivectors]).astype(np.float32)


def maxsim(query: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
  """Chamfer similarity of one query [n, d] to each document [m_j, d]."""
  flat = np.concatenate(docs)
  owner = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
  sims = query @ flat.T                                          # [n, total tokens]
  best = np.full((len(query), len(docs)), -np.inf)
  np.maximum.at(best.T, owner, sims.T)
  return best.sum(0)


def exact_maxsim_search(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray],
                        k: int) -> np.ndarray:
  """Top k documents per query by exact MaxSim, best first (ties: lower index)."""
  return np.stack([np.argsort(-maxsim(q, docs), kind="stable")[:k] for q in queries])


def search(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], cfg: FDEConfig, *,
           k: int, candidates: int, doc_fdes: np.ndarray | None = None) -> np.ndarray:
  """FDE inner-product search for `candidates` documents, reranked by exact MaxSim."""
  d_fde = encode(docs, cfg, is_query=False) if doc_fdes is None else doc_fdes
  q_fde = encode(queries, cfg, is_query=True)
  cand = top_k(q_fde @ d_fde.T, candidates)
  out = []
  for q, c in zip(queries, cand):
    scores = maxsim(q, [docs[j] for j in c])
    out.append(c[np.argsort(-scores, kind="stable")[:k]])
  return np.stack(out)
