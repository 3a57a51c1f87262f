"""Late interaction (ColBERT's MaxSim) over token vectors: scores and objectives.

A text is a matrix of token vectors with a mask: `vectors` [n, T, D] (rows
L2-normalised by the model) and `mask` [n, T] (1 for a token that counts: queries keep
their expansion tokens, documents drop padding and, optionally, punctuation). The score
of query q against document d is

    MaxSim(q, d) = sum over counted query tokens i of max over counted document
                   tokens j of <q_i, d_j>                   (Khattab & Zaharia 2020)

A document with no counted token scores 0. The objectives mirror the single-vector
ones: InfoNCE over in-batch and hard negatives (candidates laid out [positives |
negatives], the positive of query i at column i), the KL of a teacher's scores over
each query's candidates (ColBERTv2), and a ring form over the data-parallel devices
that never gathers every document's token matrix on every device.

Matryoshka for token vectors (`cell_vectors`): the model gives one token matrix per
exit layer; a (layer, dim) cell truncates its tokens to the first `dim` components and
normalises them again, so every cell is trained from the same forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxembed.losses.contrastive import info_nce_from_logits, l2_normalize
from jaxembed.models.multivector import maxsim
from jaxembed.sharding.rules import BATCH_AXES, batch_shards


def paired_maxsim(q, q_mask, d, d_mask):
  """MaxSim of each query with its own document: q [n, Tq, D], d [n, Td, D] -> [n]."""
  sim = jnp.einsum("itk,isk->its", q, d)
  sim = jnp.where(d_mask[:, None, :] > 0, sim, -jnp.inf)
  best = jnp.max(sim, axis=-1)
  best = jnp.where(jnp.isfinite(best), best, 0.0)
  return jnp.sum(best * q_mask.astype(best.dtype), axis=-1)


__all__ = ["maxsim", "paired_maxsim", "chunked_maxsim", "maxsim_info_nce",
           "maxsim_distillation", "cell_vectors", "ring_maxsim_info_nce"]


def _chunk_size(n: int, chunk: int) -> int:
  return max(c for c in range(1, min(chunk, n) + 1) if n % c == 0)


def chunked_maxsim(q, q_mask, d, d_mask, *, chunk: int = 256):
  """`maxsim` with the documents taken `chunk` at a time (the largest divisor of nd
  not above it), each chunk recomputed in the backward pass: memory grows with
  nq * chunk * Tq * Td, not nq * nd * Tq * Td."""
  n = d.shape[0]
  c = _chunk_size(n, chunk)
  blocks = (d.reshape(n // c, c, *d.shape[1:]), d_mask.reshape(n // c, c, d.shape[1]))

  @jax.checkpoint
  def one(_, block):
    return None, maxsim(q, q_mask, *block)

  _, scores = jax.lax.scan(one, None, blocks)           # [n / c, nq, c]
  return jnp.moveaxis(scores, 0, 1).reshape(q.shape[0], n)


def candidate_tokens(d, d_mask, negatives=None, neg_mask=None):
  """Positives [B, T, D] and optional hard negatives [B, k, T, D] -> the candidates
  [B + B*k, T, D] and their mask, positives first."""
  if negatives is None:
    return d, d_mask
  return (jnp.concatenate([d, negatives.reshape(-1, *negatives.shape[2:])]),
          jnp.concatenate([d_mask, neg_mask.reshape(-1, neg_mask.shape[-1])]))


def maxsim_info_nce(q, q_mask, d, d_mask, negatives=None, neg_mask=None, *,
                    scale: float = 1.0, chunk: int = 256):
  """InfoNCE over scale * MaxSim: query i against every positive of the batch and
  every hard negative, its own positive d_i the target (PyLate's Contrastive loss;
  ColBERT's scores are used unscaled, scale=1)."""
  cands, cmask = candidate_tokens(d, d_mask, negatives, neg_mask)
  logits = scale * chunked_maxsim(q, q_mask, cands, cmask, chunk=chunk)
  return info_nce_from_logits(logits)


def maxsim_distillation(q, q_mask, docs, docs_mask, teacher_scores, *,
                        scale: float = 1.0, temperature: float = 1.0):
  """ColBERTv2's distillation: per query, KL(softmax(teacher / temperature) ||
  softmax(scale * MaxSim)) over its own candidates docs [B, n, T, D] (mask [B, n, T]),
  teacher_scores [B, n]; the mean over queries."""
  sim = jnp.einsum("btk,bnsk->bnts", q, docs)
  sim = jnp.where(docs_mask[:, :, None, :] > 0, sim, -jnp.inf)
  best = jnp.max(sim, axis=-1)
  best = jnp.where(jnp.isfinite(best), best, 0.0)
  student = scale * jnp.sum(best * q_mask[:, None, :].astype(best.dtype), axis=-1)
  target = jax.nn.softmax(teacher_scores / temperature, axis=-1)
  log_target = jax.nn.log_softmax(teacher_scores / temperature, axis=-1)
  kl = jnp.sum(target * (log_target - jax.nn.log_softmax(student, axis=-1)), axis=-1)
  return jnp.mean(kl)


def cell_vectors(vectors, layer_index: int, dim: int):
  """The token vectors of one (layer, dim) cell: vectors [..., layers, T, width] ->
  [..., T, dim] of exit `layer_index` (0-based position among the model's exits),
  truncated and normalised again."""
  return l2_normalize(vectors[..., layer_index, :, :dim])


def _ring(n):
  return [(i, (i + 1) % n) for i in range(n)]


def ring_maxsim_info_nce(q, q_mask, d, d_mask, negatives=None, neg_mask=None, *,
                         mesh: Mesh, scale: float = 1.0, chunk: int = 256):
  """Same value and gradient as `maxsim_info_nce` on the global batch, every input
  split over the batch axes of `mesh`: each device keeps its queries, and the
  candidate token matrices (its positives and hard negatives) travel around the ring
  of data-parallel devices with `ppermute`, folded into a running logsumexp. A device
  holds its own block and one visiting block, never the global batch's tokens."""
  axis = BATCH_AXES
  n_dev = batch_shards(mesh)
  global_b = q.shape[0]
  has_negs = negatives is not None

  def local(q, q_mask, d, d_mask, *negs):
    block = candidate_tokens(d, d_mask, *negs) if has_negs else (d, d_mask)
    pos = scale * paired_maxsim(q, q_mask, d, d_mask)

    @jax.checkpoint
    def ring_step(carry, _):
      m, l, tokens, mask = carry
      s = scale * chunked_maxsim(q, q_mask, tokens, mask, chunk=chunk)
      m_new = jnp.maximum(m, s.max(axis=1))
      l = l * jnp.exp(m - m_new) + jnp.exp(s - m_new[:, None]).sum(axis=1)
      tokens = jax.lax.ppermute(tokens, axis, _ring(n_dev))
      mask = jax.lax.ppermute(mask, axis, _ring(n_dev))
      return (m_new, l, tokens, mask), None

    varying = lambda x: jax.lax.pcast(x, axis, to="varying")  # noqa: E731
    init = (varying(jnp.full(q.shape[:1], -jnp.inf, q.dtype)),
            varying(jnp.zeros(q.shape[:1], q.dtype)), *block)
    (m, l, _, _), _ = jax.lax.scan(ring_step, init, None, length=n_dev)
    return jax.lax.psum(jnp.sum(m + jnp.log(l) - pos), axis) / global_b

  specs = (P(axis),) * (6 if has_negs else 4)
  args = (q, q_mask, d, d_mask) + ((negatives, neg_mask) if has_negs else ())
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())(*args)
