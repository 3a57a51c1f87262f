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


def multi_positive_info_nce(logits, relevance, weights=None):
  """InfoNCE with several positives per query: the mean, over every relevant
  (query, document) pair, of -log softmax(logits[query])[document] (the softmax over
  all documents, other positives included, as LIMIT's free-embedding experiment
  trains; Weller et al. 2025). logits [Q, D]; relevance [Q, D] 0/1. `weights` [Q]
  (0 drops a query, e.g. padding) scales each query's pairs."""
  rel = relevance.astype(logits.dtype)
  if weights is not None:
    rel = rel * weights.astype(logits.dtype)[:, None]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(log_probs * rel) / jnp.maximum(jnp.sum(rel), 1.0)


def info_nce(q, d, negatives=None, *, scale: float = 20.0, symmetric: bool = False):
  """InfoNCE / multiple-negatives ranking loss (van den Oord et al. 2018; Henderson
  et al. 2017) on cosine similarity: softmax over the batch of scale * cos(q_i, c_j),
  the positive of q_i being d_i, the candidates every d_j and every hard negative.
  scale = 1 / temperature; 20 is sentence-transformers' default."""
  cands = candidates(l2_normalize(d), None if negatives is None else l2_normalize(negatives))
  logits = scale * l2_normalize(q) @ cands.T
  return info_nce_from_logits(logits, symmetric=symmetric)


def group_relevance(groups, num_candidates: int):
  """[B, C] 0/1 from groups [B]: candidate j < B is relevant to query i when
  groups[j] == groups[i]; the candidates past B (hard negatives) never are. Distinct
  groups give the identity (each query's own pair)."""
  same = (groups[:, None] == groups[None, :]).astype(jnp.float32)
  return jnp.pad(same, ((0, 0), (0, num_candidates - groups.shape[0])))


def multi_positive_pairs(q, d, negatives=None, *, groups=None, scale: float = 20.0,
                         symmetric: bool = False):
  """Multi-positive InfoNCE on a batch of pairs: every d_j of the query's group is a
  positive (`multi_positive_info_nce` over scale * cosine to every candidate, hard
  negatives included as negatives). symmetric adds the d -> q direction (d_i's
  positives: the q_j of its group) and averages. With groups None (or all distinct)
  it is InfoNCE."""
  qn = l2_normalize(q)
  cands = candidates(l2_normalize(d), None if negatives is None else l2_normalize(negatives))
  logits = scale * qn @ cands.T
  b = q.shape[0]
  rel = group_relevance(jnp.arange(b) if groups is None else groups, cands.shape[0])
  loss = multi_positive_info_nce(logits, rel)
  if symmetric:
    loss = 0.5 * (loss + multi_positive_info_nce(logits[:, :b].T, rel[:, :b].T))
  return loss


def sigmoid_loss(q, d, negatives=None, *, log_scale, bias, groups=None):
  """SigLIP (Zhai et al. 2023): -1/B sum_ij log sigmoid(z_ij (t cos(q_i, c_j) + b)),
  z_ij = +1 for the positive pair and -1 otherwise; t = exp(log_scale). The paper
  initialises log_scale = log 10 and bias = -10. groups [B]: z_ij = +1 for every
  in-batch pair of the query's group (hard negatives stay -1)."""
  cands = candidates(l2_normalize(d), None if negatives is None else l2_normalize(negatives))
  logits = jnp.exp(log_scale) * (l2_normalize(q) @ cands.T) + bias
  b = q.shape[0]
  if groups is None:
    groups = jnp.arange(b)
  z = 2.0 * group_relevance(groups, cands.shape[0]).astype(logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b


DIRECTIONS = ("qd", "dq", "qq", "dd")


def contrastive_loss(q, d, negatives=None, *, scale=20.0, directions=("qd",),
                     positive_ids=None, candidate_ids=None, margin=None,
                     focal_gamma: float = 0.0, query_negatives=None,
                     in_batch: bool = True, per_example: bool = False):
  """InfoNCE with a partition function over the chosen directions, and masking of
  false negatives.

  For pair i the loss is -log(exp(s(q_i, d_i)) / Z_i) with Z_i summing, per direction:
    qd: s(q_i, c_j) over every candidate (positives and hard negatives),
    dq: s(q_j, d_i) over every query j != i,
    qq: s(q_i, q_j) over j != i,       dd: s(d_i, d_j) over j != i,
  (the "improved contrastive loss" of GTE, Li et al. 2023; ("qd",) is plain InfoNCE).
  s = scale * cosine; `scale` may be a traced value (a learnable temperature).

  False negatives are dropped from Z_i: a candidate whose id equals the positive's id
  (`positive_ids` [B], `candidate_ids` [B + B*k]: the same text), and, with `margin`,
  any negative scoring above s(q_i, d_i) + margin (as cosine).
  query_negatives [B, s, D]: extra negatives seen by their own query only (e.g. from
  `mix_hard_negatives`).
  focal_gamma > 0 weights each example by (1 - p_i)^gamma, p_i its positive's
  probability (focal loss, Lin et al. 2017, as KaLM-Embedding-V2 uses it).
  in_batch=False drops the other pairs' texts from Z_i: each query is scored against
  its own positive and hard negatives only (NV-Embed's second stage, Lee et al. 2024,
  trains without in-batch negatives); it needs hard negatives and direction qd alone.
  """
  unknown = set(directions) - set(DIRECTIONS)
  if unknown or not directions:
    raise ValueError(f"directions {list(directions)}: valid {list(DIRECTIONS)}")
  if not in_batch:
    if tuple(directions) != ("qd",):
      raise ValueError(f"in-batch negatives off: directions {list(directions)} score "
                       "other pairs' texts; use ('qd',) alone")
    if negatives is None and query_negatives is None:
      raise ValueError("in-batch negatives off and no hard negatives: every query's "
                       "softmax would hold its positive alone (train on triplets or "
                       "k negatives: data.source=file, e.g. from experiments.mine)")
  qn, dn = l2_normalize(q), l2_normalize(d)
  cands = candidates(dn, None if negatives is None else l2_normalize(negatives))
  b = q.shape[0]
  eye = jnp.eye(b, dtype=bool)
  cos_qc = qn @ cands.T                                   # [B, C]
  pos_cos = jnp.sum(qn * dn, axis=-1)                     # [B]

  def keep_mask(cos, ids_row, ids_col, self_mask):
    """True where a term stays in Z_i; the positive itself is handled apart."""
    keep = ~self_mask
    if ids_row is not None:
      keep &= ids_col[None, :] != ids_row[:, None]
    if margin is not None:
      keep &= jax.lax.stop_gradient(cos) <= jax.lax.stop_gradient(pos_cos)[:, None] + margin
    return keep

  pos_ids = positive_ids
  cand_ids = candidate_ids
  terms = [scale * pos_cos[:, None]]                      # the positive, once
  masks = [jnp.ones((b, 1), bool)]
  if "qd" in directions:
    # the positive is the term above; without in-batch negatives every other pair's
    # positive is dropped too
    self_col = jnp.zeros(cos_qc.shape, bool).at[:, :b].set(eye if in_batch else True)
    terms.append(scale * cos_qc)
    masks.append(keep_mask(cos_qc, pos_ids, cand_ids, self_col))
  if query_negatives is not None:
    cos = jnp.einsum("bd,bsd->bs", qn, l2_normalize(query_negatives))
    terms.append(scale * cos)
    masks.append(keep_mask(cos, None, None, jnp.zeros(cos.shape, bool)))
  if "dq" in directions:
    cos = (qn @ dn.T).T                                   # [i, j] = s(q_j, d_i)
    terms.append(scale * cos)
    masks.append(keep_mask(cos, pos_ids, pos_ids, eye))
  if "qq" in directions:
    cos = qn @ qn.T
    terms.append(scale * cos)
    masks.append(keep_mask(cos, pos_ids, pos_ids, eye))
  if "dd" in directions:
    cos = dn @ dn.T
    terms.append(scale * cos)
    masks.append(keep_mask(cos, pos_ids, pos_ids, eye))
  logits = jnp.concatenate(terms, axis=1)
  mask = jnp.concatenate(masks, axis=1)
  log_z = jax.nn.logsumexp(jnp.where(mask, logits, -jnp.inf), axis=1)
  nll = log_z - scale * pos_cos
  if focal_gamma:
    nll = (1.0 - jnp.exp(-nll)) ** focal_gamma * nll
  return nll if per_example else jnp.mean(nll)


def mix_hard_negatives(q, d, rng, *, n_hardest: int = 4, n_synthetic: int = 4,
                       negatives=None):
  """Synthetic negatives per query from its hardest negatives (MoCHi, Kalantidis et
  al. 2020; the online hard-negative mixing of KaLM-Embedding-V2): for each query the
  `n_hardest` highest-scoring non-positive candidates are found, and `n_synthetic`
  random convex mixtures of two of them are renormalised. They are constants
  (stop-gradient), as in MoCHi. Returns [B, n_synthetic, D], to pass as extra
  per-query negatives (`contrastive_loss(..., query_negatives=...)`).
  """
  qn, cands = l2_normalize(q), candidates(
      l2_normalize(d), None if negatives is None else l2_normalize(negatives))
  b = q.shape[0]
  scores = jax.lax.stop_gradient(qn @ cands.T)
  scores = scores.at[jnp.arange(b), jnp.arange(b)].set(-jnp.inf)   # not the positive
  _, hardest = jax.lax.top_k(scores, n_hardest)                    # [B, h]
  k1, k2, k3 = jax.random.split(rng, 3)
  i = jax.random.randint(k1, (b, n_synthetic), 0, n_hardest)
  j = jax.random.randint(k2, (b, n_synthetic), 0, n_hardest)
  alpha = jax.random.uniform(k3, (b, n_synthetic, 1))
  pick = lambda idx: cands[jnp.take_along_axis(hardest, idx, axis=1)]
  mixed = alpha * pick(i) + (1.0 - alpha) * pick(j)
  return jax.lax.stop_gradient(l2_normalize(mixed))
