"""The one train step: a pure function of (state, batch), model and loss injected."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxembed.train.grad_cache import grad_cache_value_and_grad
from jaxembed.train.state import TrainState


def encode_pairs(model: nn.Module, params, batch, rng, *, deterministic: bool):
  """Anchors, positives and (if the batch has them) k hard negatives per pair, in one
  forward pass (one larger matmul per layer).

  Returns (anchor, positive) pooled vectors, each [batch, n_layers, hidden], and
  negatives [batch, k, n_layers, hidden] when present.
  """
  from jaxembed.models.two_tower import TwoTower
  if isinstance(model, TwoTower):   # two towers: each side through its own
    if batch.get("negatives") is not None:
      raise ValueError("hard negatives are not supported with two towers")
    return model.apply({"params": params}, batch["anchor"], batch["positive"],
                       deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng})
  parts = [batch["anchor"], batch["positive"]]
  negatives = batch.get("negatives")
  if negatives is not None:
    b, k, t = negatives["input_ids"].shape
    parts.append({key: v.reshape(b * k, t) for key, v in negatives.items()})
  ids = jnp.concatenate([p["input_ids"] for p in parts])
  mask = jnp.concatenate([p["attention_mask"] for p in parts])
  # Instruction tokens (anchors with data.query_instruction) are attended, not pooled.
  pool = (jnp.concatenate([p.get("pool_mask", p["attention_mask"]) for p in parts])
          if any("pool_mask" in p for p in parts) else None)
  out = model.apply({"params": params}, ids, mask, deterministic=deterministic,
                    rngs=None if deterministic else {"dropout": rng}, pool_mask=pool)
  n = batch["anchor"]["input_ids"].shape[0]
  if negatives is None:
    return out[:n], out[n:2 * n]
  return out[:n], out[n:2 * n], out[2 * n:].reshape(n, k, *out.shape[1:])


def train_step(state: TrainState, batch, *, model: nn.Module,
               loss_fn: Callable, tx: optax.GradientTransformation,
               deterministic: bool = False, grad_cache_minibatch: int = 0):
  """loss_fn(anchor_layers, positive_layers[, negative_layers], *, rng, loss_params)
  -> (loss, aux); loss_params is params["loss"] (a learnable temperature) or None.

  The dropout key is fold_in(state.rng, state.step): it depends on nothing but the
  seed and the step, so a resumed run draws the same masks as an uninterrupted one.
  grad_cache_minibatch > 0 encodes the batch in mini-batches of that many pairs
  (GradCache), bounding activation memory by the mini-batch.
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def encode(params, sub_batch, key):
    return encode_pairs(model, params, sub_batch, key, deterministic=deterministic)

  encode_rng, loss_rng = jax.random.split(rng)
  def objective(embeddings, params):
    return loss_fn(*embeddings, rng=loss_rng, loss_params=params.get("loss"))

  if grad_cache_minibatch:
    (loss, aux), grads = grad_cache_value_and_grad(
        encode, objective, state.params, batch, encode_rng, grad_cache_minibatch)
  else:
    (loss, aux), grads = jax.value_and_grad(
        lambda p: objective(encode(p, batch, encode_rng), p), has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
