"""In-batch contrastive objectives.

Inputs are the global batch: under `jit` with a batch-sharded mesh the [B, B] logits
span every device, so in-batch negatives are global negatives without a gather.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps), as torch.nn.functional.normalize (sentence-transformers)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def info_nce_from_logits(logits, *, symmetric: bool = False):
  """Cross-entropy with the diagonal as the positive ([B, B] logits, row = query).

  symmetric=True averages the query->doc and doc->query directions (CLIP's loss).
  """
  diag = jnp.diagonal(logits)
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  if symmetric:
    loss = 0.5 * (loss + jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag))
  return loss


def info_nce(q, d, *, scale: float = 20.0, symmetric: bool = False):
  """InfoNCE / multiple-negatives ranking loss (van den Oord et al. 2018; Henderson
  et al. 2017) on cosine similarity: softmax over the batch of scale * cos(q_i, d_j),
  the positive of q_i being d_i. scale = 1 / temperature; 20 is sentence-transformers'
  default for MultipleNegativesRankingLoss."""
  logits = scale * l2_normalize(q) @ l2_normalize(d).T
  return info_nce_from_logits(logits, symmetric=symmetric)
