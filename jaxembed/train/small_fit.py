"""A small optimisation loop for the models fitted on fixed arrays in one process (a
binariser on embeddings, alignment maps on paired features): Adam with a cosine decay,
each iteration a seeded random batch of rows, the loss logged and kept."""

from __future__ import annotations

import logging
from typing import Callable

import jax
import jax.numpy as jnp
import optax

LOG_EVERY = 250


def fit_on_batches(loss_fn: Callable, params, data: tuple, *, iterations: int,
                   batch_size: int, learning_rate: float, key, label: str):
  """(params, history) after `iterations` Adam steps of loss_fn(params, *batch), each
  batch the same `batch_size` random rows (without replacement, drawn from `key`) of
  every array in `data`. history: (iteration, loss) every LOG_EVERY iterations and at
  the last, each logged with `label`."""
  n = len(data[0])
  arrays = tuple(jnp.asarray(a) for a in data)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, iterations))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    loss, grads = jax.value_and_grad(loss_fn)(params, *(a[idx] for a in arrays))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  for it in range(iterations):
    key, sub = jax.random.split(key)
    params, opt_state, loss = step(params, opt_state, sub)
    if it % LOG_EVERY == 0 or it == iterations - 1:
      history.append((it, float(loss)))
      logging.info("%s: iteration %d/%d loss %.4f", label, it + 1, iterations, float(loss))
  return params, history
