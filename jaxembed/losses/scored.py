"""Objectives for scored pairs (STS-style data: two texts and a similarity grade).

Both rank the pairs of a batch: every pair (i, j) with grade_i > grade_j should score
s_i > s_j, penalised by log(1 + sum exp(tau (s_j - s_i))).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.nn import logsumexp

from jaxembed.losses.contrastive import l2_normalize


def _rank_loss(scores, grades):
  """log(1 + sum over grade_i > grade_j of exp(scores_j - scores_i))."""
  diff = scores[None, :] - scores[:, None]                 # [i, j] = s_j - s_i
  ordered = grades[:, None] > grades[None, :]
  terms = jnp.where(ordered, diff, -jnp.inf).reshape(-1)
  return logsumexp(jnp.concatenate([jnp.zeros((1,), diff.dtype), terms]))


def cosent_loss(u, v, grades, *, tau: float = 20.0):
  """CoSENT (Su 2022): the ranking loss on tau * cos(u_i, v_i)."""
  return _rank_loss(tau * jnp.sum(l2_normalize(u) * l2_normalize(v), -1), grades)


def angle_scores(u, v):
  """AnglE's angle term score (Li & Li 2024; formulation as in the reference code,
  SeanLee97/AnglE angle_emb/loss.py): each vector's halves are the real and imaginary
  parts of a complex vector; u * conj(v) / ||v||^2 (element-wise product, divided by
  the whole vector's squared norm, as the reference does) is rescaled by ||v|| / ||u||,
  and the absolute value of the sum of its real and imaginary parts is the score."""
  a, b = jnp.split(u, 2, axis=-1)
  c, d = jnp.split(v, 2, axis=-1)
  z = jnp.sum(c ** 2 + d ** 2, axis=-1, keepdims=True)
  re = (a * c + b * d) / z
  im = (b * c - a * d) / z
  norm_u = jnp.sqrt(jnp.sum(a ** 2 + b ** 2, axis=-1, keepdims=True))
  norm_v = jnp.sqrt(z)
  scale = norm_v / norm_u
  return jnp.abs(jnp.sum(re * scale, -1) + jnp.sum(im * scale, -1))


def angle_loss(u, v, grades, *, tau: float = 20.0):
  """The ranking loss on tau * angle_scores (AnglE's angle objective)."""
  return _rank_loss(tau * angle_scores(u, v), grades)


def angle_objective(u, v, grades, *, cosine_weight: float = 1.0, angle_weight: float = 1.0,
                    tau: float = 20.0):
  """AnglE for scored pairs: cosine (CoSENT) and angle terms, weighted. (AnglE also
  adds an in-batch contrastive term; combine with `contrastive_loss` for that.)"""
  return (cosine_weight * cosent_loss(u, v, grades, tau=tau)
          + angle_weight * angle_loss(u, v, grades, tau=tau))
