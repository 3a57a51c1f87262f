"""In-batch contrastive objectives.

Inputs are the global batch: under `jit` with a batch-sharded mesh the logits span
every device, so in-batch negatives are global negatives without a hand-written gather.
Candidates are laid out as [all positives (B) | all hard negatives (B * k)], so the
positive of query i is column i whatever the device count (peers that gather
[positives_0, negatives_0, positives_1, ...] per device put it elsewhere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps), as torch.nn.functional.normalize (sentence-transformers)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def candidates(d, negatives=None):
  """[B, D] positives and optional [B, k, D] hard negatives -> [B + B*k, D]."""
  if negatives is None:
    return d
  return jnp.concatenate([d, negatives.reshape(-1, negatives.shape[-1])], axis=0)


def info_nce_from_logits(logits, *, symmetric: bool = False):
  """Cross-entropy with column i as the positive of row i ([B, C >= B] logits).

  symmetric=True averages the query->doc and doc->query directions (CLIP's loss); the
  doc->query direction ranks the B queries for each positive, hard negatives aside.
  """
  b = logits.shape[0]
  diag = jnp.diagonal(logits[:, :b])
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  if symmetric:
    loss = 0.5 * (loss + jnp.mean(jax.nn.logsumexp(logits[:, :b], axis=0) - diag))
  return loss


def info_nce(q, d, negatives=None, *, scale: float = 20.0, symmetric: bool = False):
  """InfoNCE / multiple-negatives ranking loss (van den Oord et al. 2018; Henderson
  et al. 2017) on cosine similarity: softmax over the batch of scale * cos(q_i, c_j),
  the positive of q_i being d_i, the candidates every d_j and every hard negative.
  scale = 1 / temperature; 20 is sentence-transformers' default."""
  cands = candidates(l2_normalize(d), None if negatives is None else l2_normalize(negatives))
  logits = scale * l2_normalize(q) @ cands.T
  return info_nce_from_logits(logits, symmetric=symmetric)


def sigmoid_loss(q, d, negatives=None, *, log_scale, bias):
  """SigLIP (Zhai et al. 2023): -1/B sum_ij log sigmoid(z_ij (t cos(q_i, c_j) + b)),
  z_ij = +1 for the positive pair and -1 otherwise; t = exp(log_scale). The paper
  initialises log_scale = log 10 and bias = -10."""
  cands = candidates(l2_normalize(d), None if negatives is None else l2_normalize(negatives))
  logits = jnp.exp(log_scale) * (l2_normalize(q) @ cands.T) + bias
  b = q.shape[0]
  z = jnp.full_like(logits, -1.0).at[:, :b].add(2.0 * jnp.eye(b, dtype=logits.dtype))
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b
