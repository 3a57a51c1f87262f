"""Multi-vector retrieval: exhaustive MaxSim over a corpus (jitted, a block of
documents at a time) and the (layer, dim) grid of retrieval metrics the single-vector
evaluation reports, from each text's token matrix [layers, tokens, width] (as
`jaxembed.batch_encode.TokenEncoder` gives them). `maxsim_search` scores queries
against every document with memory bounded by the block: [block, Td, dim] document
tokens and [Q, block] scores at a time.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.evals.retrieval import dense_retrieval_metrics
from jaxembed.evals.tasks import RetrievalTask
from jaxembed.models.multivector import maxsim


def pad_tokens(matrices: Sequence[np.ndarray], layer_index: int, dim: int):
  """Token matrices [layers, t_i, width] -> (tokens [n, T, dim] of one layer,
  truncated to `dim` and normalised again; mask [n, T]), T the longest."""
  longest = max(1, max(m.shape[1] for m in matrices))
  tokens = np.zeros((len(matrices), longest, dim), np.float32)
  mask = np.zeros((len(matrices), longest), np.float32)
  for i, m in enumerate(matrices):
    v = m[layer_index, :, :dim]
    tokens[i, :len(v)] = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    mask[i, :len(v)] = 1
  return tokens, mask


@jax.jit
def _block_scores(q, q_mask, d, d_mask):
  return maxsim(q, q_mask, d, d_mask)


def maxsim_scores(queries, q_mask, docs, d_mask, *, block: int = 256,
                  budget: int = 2**24) -> np.ndarray:
  """Exhaustive MaxSim [Q, N] of padded queries [Q, Tq, D] against padded documents
  [N, Td, D]: `block` documents at a time against as many queries as keep the
  [queries, block, Tq, Td] similarities within `budget` floats (64 MB at 2^24), every
  chunk padded to one shape (empty documents and queries: one compiled program)."""
  n, nq = len(docs), len(queries)
  block = min(block, n)
  per_query = block * queries.shape[1] * docs.shape[1]
  q_chunk = min(nq, max(1, 1 << ((budget // per_query).bit_length() - 1))
                if budget >= per_query else 1)
  out = np.zeros((nq, n), np.float32)
  for qs in range(0, nq, q_chunk):
    q, qm = queries[qs:qs + q_chunk], q_mask[qs:qs + q_chunk]
    q_rows = len(q)
    if q_rows < q_chunk:
      q = np.pad(q, ((0, q_chunk - q_rows), (0, 0), (0, 0)))
      qm = np.pad(qm, ((0, q_chunk - q_rows), (0, 0)))
    for ds in range(0, n, block):
      d, dm = docs[ds:ds + block], d_mask[ds:ds + block]
      rows = len(d)
      if rows < block:
        d = np.pad(d, ((0, block - rows), (0, 0), (0, 0)))
        dm = np.pad(dm, ((0, block - rows), (0, 0)))
      out[qs:qs + q_rows, ds:ds + rows] = np.asarray(
          _block_scores(q, qm, d, dm))[:q_rows, :rows]
  return out


def maxsim_search(queries, q_mask, docs, d_mask, k: int, *, block: int = 256):
  """(scores [Q, k], indices [Q, k]) of each query's k best documents by MaxSim."""
  scores = maxsim_scores(queries, q_mask, docs, d_mask, block=block)
  k = min(k, scores.shape[1])
  top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, top, axis=1), top


def evaluate_grid(encode_queries, encode_documents, tasks: Sequence, layers: Sequence[int],
                  dims: Sequence[int]) -> list[dict]:
  """One row per (layer, dim) cell: {'layer', 'dim', '<task>/ndcg_at_k',
  '<task>/mrr_at_k'} for every retrieval task (other tasks score pooled vectors and are
  skipped), from one encoding of each query and document."""
  tasks = [t for t in tasks if isinstance(t, RetrievalTask)]
  queries = list(dict.fromkeys(q for t in tasks for q in t.queries))
  docs = list(dict.fromkeys(d for t in tasks for d in t.corpus))
  q_vecs = dict(zip(queries, encode_queries(queries))) if queries else {}
  d_vecs = dict(zip(docs, encode_documents(docs))) if docs else {}
  rows = []
  for layer in layers:
    for dim in dims:
      row = {"layer": int(layer), "dim": int(dim)}
      for task in tasks:
        q, qm = pad_tokens([q_vecs[t] for t in task.queries], layer - 1, dim)
        d, dm = pad_tokens([d_vecs[t] for t in task.corpus], layer - 1, dim)
        m = dense_retrieval_metrics(maxsim_scores(q, qm, d, dm), task.relevance, task.k)
        row.update({f"{task.name}/{key}": m[key]
                    for key in (f"ndcg_at_{task.k}", f"mrr_at_{task.k}")})
      rows.append(row)
  return rows
