"""Quantised retrieval: binary (sign bits, Hamming distance), int8 (per-dimension
ranges calibrated on a sample) and BEBR's recurrent binary codes (several bits per
dimension, scored by `sdc_scores`), each optionally followed by rescoring a candidate
list with the float vectors.

Bytes per vector: binary ceil(d / 8), int8 d, float32 4d. Rescoring keeps the float
vectors off the hot path (on disk in practice) and reads only `rescore` of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxembed.evals.retrieval import top_k

_BLOCK = 256   # queries scored at a time: memory is block x corpus, never Q x corpus


def pack_binary(vecs: np.ndarray) -> np.ndarray:
  """Sign bits (x > 0 -> 1), packed 8 per byte: [n, ceil(d / 8)] uint8."""
  return np.packbits(vecs > 0, axis=1)


def hamming(q_bits: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
  """[Q, N] Hamming distances between packed bit rows (read 8 bytes at a time when
  the rows are a whole number of 64-bit words)."""
  if q_bits.shape[-1] % 8 == 0:
    q_bits = np.ascontiguousarray(q_bits).view(np.uint64)
    d_bits = np.ascontiguousarray(d_bits).view(np.uint64)
  return np.bitwise_count(q_bits[:, None, :] ^ d_bits[None, :, :]).sum(-1, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Int8Calibration:
  """x -> round((x - low) / (high - low) * 255) - 128, clipped, per dimension."""
  low: np.ndarray
  high: np.ndarray

  @classmethod
  def fit(cls, sample: np.ndarray, quantile: float = 0.0) -> "Int8Calibration":
    low = np.quantile(sample, quantile, axis=0) if quantile else sample.min(0)
    high = np.quantile(sample, 1 - quantile, axis=0) if quantile else sample.max(0)
    return cls(low.astype(np.float32), np.maximum(high, low + 1e-6).astype(np.float32))

  def quantize(self, vecs: np.ndarray) -> np.ndarray:
    steps = (vecs - self.low) / (self.high - self.low) * 255.0
    return (np.clip(np.rint(steps), 0, 255) - 128).astype(np.int8)


BACKENDS = ("auto", "numpy", "faiss")


def binary_search(queries: np.ndarray, corpus: np.ndarray, k: int, *,
                  backend: str = "auto") -> np.ndarray:
  """Top k by Hamming distance of sign bits (lower is better; ties to the lower index).

  backend: 'numpy' (blocked popcounts), 'faiss' (faiss.IndexBinaryFlat, the `faiss`
  extra: its search finds the k-th distance, a range search then takes every item at
  or below it, so ties at the boundary go to the lower index exactly as in 'numpy'),
  or 'auto' (faiss when it is installed). Both return the same indices in the same
  order."""
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; valid: {list(BACKENDS)}")
  qb, db = pack_binary(queries), pack_binary(corpus)
  k = min(k, len(db))
  if backend != "numpy":
    try:
      import faiss
    except ImportError:
      if backend == "faiss":
        raise ImportError("backend='faiss' needs faiss: pip install 'jaxembed[faiss]'")
      faiss = None
    if faiss is not None:
      return _faiss_binary_search(faiss, qb, db, k)
  return np.concatenate([top_k(-hamming(qb[s:s + _BLOCK], db), k)
                         for s in range(0, len(qb), _BLOCK)])


def _faiss_binary_search(faiss, qb, db, k: int) -> np.ndarray:
  """faiss.IndexBinaryFlat wants whole bytes: codes are padded with zero bits, which
  leaves every Hamming distance unchanged."""
  index = faiss.IndexBinaryFlat(8 * qb.shape[1])
  index.add(np.ascontiguousarray(db))
  dist, _ = index.search(np.ascontiguousarray(qb), k)
  # Every item within each query's k-th distance (one range search per distinct k-th
  # distance: faiss takes one radius per call, and returns distances < radius), then
  # (distance, index) order: the boundary's ties resolved as the stable sort does.
  kth = dist[:, -1].astype(np.int64)
  out = np.empty((len(qb), k), np.int64)
  for radius in np.unique(kth):
    rows = np.flatnonzero(kth == radius)
    lims, rd, ri = index.range_search(np.ascontiguousarray(qb[rows]), int(radius) + 1)
    for n, r in enumerate(rows):
      d, i = rd[lims[n]:lims[n + 1]], ri[lims[n]:lims[n + 1]]
      out[r] = i[np.lexsort((i, d))][:k]
  return out


def int8_search(queries: np.ndarray, corpus: np.ndarray, k: int,
                calibration: Int8Calibration) -> np.ndarray:
  """Top k by the int32 dot product of int8 codes."""
  qi = calibration.quantize(queries).astype(np.int32)
  di = calibration.quantize(corpus).astype(np.int32)
  return np.concatenate([top_k(qi[s:s + _BLOCK] @ di.T, k)
                         for s in range(0, len(qi), _BLOCK)])


def rescore(queries: np.ndarray, corpus: np.ndarray, candidates: np.ndarray,
            k: int) -> np.ndarray:
  """The candidates reranked by float inner product; the best k, best first."""
  scores = np.einsum("qd,qkd->qk", queries, corpus[candidates])
  return np.take_along_axis(candidates, top_k(scores, k), axis=1)


def sdc_scores(q_codes: np.ndarray, d_codes: np.ndarray, weights,
               code_dim: int) -> np.ndarray:
  """BEBR's symmetric distance computation: [Q, N] inner products of the binary
  values v = sum_t w_t c_t (c_t in {-1, +1}^code_dim) of two sets of packed codes
  [n, steps, ceil(code_dim / 8)] uint8, from popcounts alone:

      <v_q, v_d> = sum_{s,t} w_s w_t (code_dim - 2 popcount(q_s XOR d_t))

  (the padding bits of the last byte are zero on both sides and never differ)."""
  w = np.asarray(weights, np.float64)
  steps = q_codes.shape[1]
  out = np.zeros((len(q_codes), len(d_codes)), np.float64)
  for s in range(steps):
    for t in range(steps):
      differ = hamming(q_codes[:, s], d_codes[:, t])
      out += w[s] * w[t] * (code_dim - 2.0 * differ)
  return out.astype(np.float32)


def sdc_search(q_codes: np.ndarray, d_codes: np.ndarray, weights, code_dim: int,
               k: int) -> np.ndarray:
  """Top k by `sdc_scores`, queries in blocks (memory: block x corpus)."""
  k = min(k, len(d_codes))
  return np.concatenate([top_k(sdc_scores(q_codes[s:s + _BLOCK], d_codes, weights,
                                          code_dim), k)
                         for s in range(0, len(q_codes), _BLOCK)])


def bytes_per_vector(kind: str, dim: int) -> int:
  return {"float32": 4 * dim, "int8": dim, "binary": -(-dim // 8)}[kind]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
  """Mean |found[:k] & truth[:k]| / k: how much of the exact top k is recovered."""
  return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))
