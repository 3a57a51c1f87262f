"""STRUCTURE's regulariser (Groger, Wen, Le & Brbic 2025, "With Limited Data for
Multimodal Alignment, Let the STRUCTURE Guide You"): while small alignment maps are
trained on few (image, text) pairs, each modality's batch keeps the neighbourhood
geometry it had in its frozen encoder's space, at several scales.

Our reading (the paper's equations were not available offline; its summaries say
"multi-scale neighbourhood consistency between each modality's latent space and the
shared embedding"): for a batch of frozen features Z and aligned vectors H (both
normalised), P = softmax over j != i of cos(z_i, z_j) / temperature and Q likewise from
H are one-step random walks over the batch; scale l compares the l-step walks P^l and
Q^l row by row by the Jensen-Shannon divergence, and the regulariser is the mean over
rows and over l = 1 ... levels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.losses.contrastive import l2_normalize


def neighbourhood_walk(x, temperature: float):
  """[B, B] row-stochastic: softmax over j != i of cos(x_i, x_j) / temperature."""
  xn = l2_normalize(x)
  b = x.shape[0]
  logits = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, xn @ xn.T / temperature)
  return jax.nn.softmax(logits, axis=-1)


def js_rows(p, q, eps: float = 1e-12):
  """Mean over rows of the Jensen-Shannon divergence (natural log) of rows of p, q."""
  m = 0.5 * (p + q)
  kl = lambda a: jnp.sum(a * (jnp.log(a + eps) - jnp.log(m + eps)), axis=-1)
  return jnp.mean(0.5 * kl(p) + 0.5 * kl(q))


def structure_regularizer(frozen, aligned, *, levels: int = 3, temperature: float = 0.1):
  """Mean over l = 1 ... levels of js_rows(P^l, Q^l), P from `frozen` [B, d1] (held
  constant) and Q from `aligned` [B, d2]."""
  p = jax.lax.stop_gradient(neighbourhood_walk(frozen, temperature))
  q = neighbourhood_walk(aligned, temperature)
  total, pl, ql = 0.0, p, q
  for level in range(levels):
    if level:
      pl, ql = pl @ p, ql @ q
    total = total + js_rows(pl, ql)
  return total / levels
