"""Distillation objectives: teacher score distributions, embeddings, and deep-to-shallow
self-distillation. Every teacher is a constant (stop-gradient)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxembed.losses.contrastive import candidates, info_nce_from_logits, l2_normalize


def kl_scores(student_logits, teacher_logits, *, temperature: float = 1.0):
  """mean_i KL(softmax(teacher_i / T) || softmax(student_i / T)) * T^2 (Hinton et al.
  2015). teacher_logits may come from the data (cross-encoder scores) or the model."""
  t = jax.lax.stop_gradient(teacher_logits) / temperature
  p = jax.nn.softmax(t, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(p * (jax.nn.log_softmax(t, axis=-1) - log_q), axis=-1)
  return jnp.mean(kl) * temperature ** 2


def mse_embeddings(student, teacher):
  """mean squared error to the teacher's embeddings (e.g. a truncated sub-model to the
  full one, or a small model to a large one's projected vectors)."""
  return jnp.mean(jnp.square(student - jax.lax.stop_gradient(teacher)))


def multi_exit_self_distillation(q_layers, d_layers, exits: Sequence[int], *,
                                 layer_index: dict[int, int], scale: float = 20.0,
                                 distill_weight: float = 1.0, teacher: str = "next",
                                 temperature: float = 1.0, negatives=None):
  """Hierarchical self-distillation over exit layers (ModularStarEncoder, Gallo et al.
  2025): every exit is trained with InfoNCE, and each shallower exit also matches the
  in-batch score distribution of a deeper one (the next exit, or the deepest), detached.
  Returns (loss, {"exit_<l>": contrastive, "distill_<l>": kl}).
  """
  if teacher not in ("next", "deepest"):
    raise ValueError(f"teacher={teacher!r}: valid 'next', 'deepest'")
  exits = sorted(exits)
  logits = {}
  for layer in exits:
    i = layer_index[layer]
    negs = None if negatives is None else l2_normalize(negatives[:, :, i])
    logits[layer] = scale * l2_normalize(q_layers[:, i]) @ candidates(
        l2_normalize(d_layers[:, i]), negs).T
  parts = {f"exit_{l}": info_nce_from_logits(logits[l]) for l in exits}
  for n, layer in enumerate(exits[:-1]):
    deeper = exits[n + 1] if teacher == "next" else exits[-1]
    parts[f"distill_{layer}"] = kl_scores(logits[layer], logits[deeper],
                                          temperature=temperature)
  loss = sum(v for k, v in parts.items() if k.startswith("exit_")) / len(exits)
  if len(exits) > 1:
    loss += distill_weight * sum(v for k, v in parts.items()
                                 if k.startswith("distill_")) / (len(exits) - 1)
  return loss, parts
