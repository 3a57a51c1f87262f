"""Distillation objectives: teacher score distributions, embeddings, and deep-to-shallow
self-distillation. Every teacher is a constant (stop-gradient)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxembed.losses.contrastive import candidates, info_nce_from_logits, l2_normalize


def kl_scores(student_logits, teacher_logits, *, temperature: float = 1.0, rows=None):
  """mean_i KL(softmax(teacher_i / T) || softmax(student_i / T)) * T^2 (Hinton et al.
  2015). teacher_logits may come from the data (cross-encoder scores) or the model.
  rows: None, or [n] bools: the mean is over those rows only (0 if none)."""
  t = jax.lax.stop_gradient(teacher_logits) / temperature
  p = jax.nn.softmax(t, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(p * (jax.nn.log_softmax(t, axis=-1) - log_q), axis=-1)
  return _masked_mean(kl, rows) * temperature ** 2


def _masked_mean(x, rows=None):
  if rows is None:
    return jnp.mean(x)
  w = rows.astype(x.dtype)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def mse_embeddings(student, teacher):
  """mean squared error to the teacher's embeddings (e.g. a truncated sub-model to the
  full one, or a small model to a large one's projected vectors)."""
  return jnp.mean(jnp.square(student - jax.lax.stop_gradient(teacher)))


def multi_exit_self_distillation(q_layers, d_layers, exits: Sequence[int], *,
                                 layer_index: dict[int, int], scale: float = 20.0,
                                 distill_weight: float = 1.0, teacher: str = "next",
                                 temperature: float = 1.0, negatives=None):
  """Hierarchical self-distillation over exit layers (ModularStarEncoder / MoSE, Gurioli
  et al. 2025): every exit is trained with InfoNCE, and each shallower exit also matches the
  in-batch score distribution of a deeper one (the next exit, or the deepest), detached.
  Returns (loss, {"exit_<l>": contrastive, "distill_<l>": kl}).

  teacher='none' is the study's control: each shallower exit's "distill" term is its
  own InfoNCE again, so it carries the same extra loss weight with no deeper exit
  guiding it.
  """
  if teacher not in ("next", "deepest", "none"):
    raise ValueError(f"teacher={teacher!r}: valid 'next', 'deepest', 'none'")
  exits = sorted(exits)
  logits = {}
  for layer in exits:
    i = layer_index[layer]
    negs = None if negatives is None else l2_normalize(negatives[:, :, i])
    logits[layer] = scale * l2_normalize(q_layers[:, i]) @ candidates(
        l2_normalize(d_layers[:, i]), negs).T
  parts = {f"exit_{l}": info_nce_from_logits(logits[l]) for l in exits}
  for n, layer in enumerate(exits[:-1]):
    if teacher == "none":
      parts[f"distill_{layer}"] = parts[f"exit_{layer}"]
      continue
    deeper = exits[n + 1] if teacher == "next" else exits[-1]
    parts[f"distill_{layer}"] = kl_scores(logits[layer], logits[deeper],
                                          temperature=temperature)
  loss = sum(v for k, v in parts.items() if k.startswith("exit_")) / len(exits)
  if len(exits) > 1:
    loss += distill_weight * sum(v for k, v in parts.items()
                                 if k.startswith("distill_")) / (len(exits) - 1)
  return loss, parts


def relational_kd(student, teacher, *, scale: float = 20.0, temperature: float = 1.0,
                  rows=None):
  """Distillation of the teacher's similarity structure over a set of texts: for each
  text, KL(teacher || student) between the softmax over its scaled cosine similarities
  to every other text of the set (itself excluded). student [n, d_s] and teacher
  [n, d_t] may differ in width (a truncated sub-model learns from the full teacher).
  rows: None, or [n] bools: the texts whose distributions are matched (the mean is
  over them; every text still appears among the others)."""
  s, t = l2_normalize(student), l2_normalize(jax.lax.stop_gradient(teacher))
  n = s.shape[0]
  off = ~jnp.eye(n, dtype=bool)
  neg = jnp.finfo(jnp.float32).min
  s_logits = jnp.where(off, scale * (s @ s.T).astype(jnp.float32), neg)
  t_logits = jnp.where(off, scale * (t @ t.T).astype(jnp.float32), neg)
  return kl_scores(s_logits, t_logits, temperature=temperature, rows=rows)


def teacher_distillation(texts_by_layer, teacher, *, cells, layer_index: dict,
                         full_layer: int, scale: float = 20.0, temperature: float = 1.0,
                         weight: float = 1.0, anchor_weight: float = 0.0,
                         anchor_rows=None, kl_rows=None, anchor_teacher=None):
  """A frozen teacher's knowledge kept in every Matryoshka cell: `weight` x the mean of
  `relational_kd` over the (layer, dim) cells, weighted as the cells are, plus
  `anchor_weight` x (1 - cosine) between the full model's last layer and the teacher's
  embedding of each text (the full cell anchored to the teacher).

  texts_by_layer: [n, layers, width] student vectors of the batch's texts; teacher:
  [n, d_t]; anchor_rows, kl_rows: None, or [n] bools, the texts the anchor holds and
  those whose similarity distributions the KL matches (means over them);
  anchor_teacher: None, or [n, width] the teacher's vectors mapped into the student's
  space (loss.distill.anchor_map), which the anchor then reads instead. Returns
  (loss, {"distill/<cell>": kl, "distill": their weighted mean, ["anchor": 1 - cos]}).
  """
  total_w = sum(c.weight for c in cells)
  parts = {}
  loss = 0.0
  if weight:
    for cell in cells:
      x = texts_by_layer[:, layer_index[cell.layer], :cell.dim]
      parts[f"distill/{cell.name}"] = relational_kd(x, teacher, scale=scale,
                                                    temperature=temperature, rows=kl_rows)
    parts["distill"] = sum(c.weight / total_w * parts[f"distill/{c.name}"] for c in cells)
    loss = weight * parts["distill"]
  if anchor_weight:
    full = l2_normalize(texts_by_layer[:, layer_index[full_layer]])
    t = l2_normalize(jax.lax.stop_gradient(teacher if anchor_teacher is None
                                           else anchor_teacher))
    if full.shape[-1] != t.shape[-1]:
      raise ValueError(f"the anchor needs the student's width {full.shape[-1]} to equal "
                       f"the teacher's {t.shape[-1]}")
    parts["anchor"] = _masked_mean(1.0 - jnp.sum(full * t, axis=-1), anchor_rows)
    loss = loss + anchor_weight * parts["anchor"]
  return loss, parts
