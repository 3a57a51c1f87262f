"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup"): the gradient of a contrastive loss over a batch of N encoded
in mini-batches of m, so memory is bounded by the mini-batch, not the batch.

1. Encode every mini-batch without keeping activations (no gradient is taken here).
2. Take the loss and its gradient with respect to the N embeddings (cheap: the loss
   only sees [N, layers, hidden] vectors).
3. Re-encode each mini-batch with the same dropout key and pull that embedding
   gradient back to the parameters with `jax.vjp`, summing over mini-batches.

The result equals the full-batch gradient when the full batch is encoded with the same
per-mini-batch dropout keys (tests/test_grad_cache.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def split_minibatches(tree, n: int):
  """[B, ...] -> [n, B / n, ...] with mini-batch i holding rows i, i + n, i + 2n, ...

  Strided rather than contiguous: a batch split over devices keeps every mini-batch
  spread over all devices, so each pass uses the whole mesh."""
  def split(x):
    m = x.shape[0] // n
    return jnp.swapaxes(x.reshape(m, n, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, tree)


def merge_minibatches(tree):
  """The inverse of `split_minibatches`: [n, m, ...] -> [n * m, ...]."""
  def merge(x):
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
  return jax.tree.map(merge, tree)


def grad_cache_value_and_grad(encode: Callable, loss_fn: Callable, params, batch, rng,
                              minibatch: int):
  """encode(params, sub_batch, key) -> embeddings (a pytree, batch-major);
  loss_fn(embeddings, params) -> (loss, aux), where the loss may read parameters of its
  own (a learnable temperature) from `params`. Returns ((loss, aux), grads)."""
  n = jax.tree.leaves(batch)[0].shape[0] // minibatch
  subs = split_minibatches(batch, n)
  keys = jax.random.split(rng, n)
  frozen = jax.lax.stop_gradient(params)
  embeddings = jax.lax.map(lambda a: encode(frozen, a[0], a[1]), (subs, keys))
  embeddings = merge_minibatches(embeddings)
  (loss, aux), (emb_grads, direct) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(embeddings, params)
  emb_grads = split_minibatches(emb_grads, n)

  def accumulate(total, inputs):
    sub, key, cotangent = inputs
    _, pull_back = jax.vjp(lambda p: encode(p, sub, key), params)
    (grads,) = pull_back(cotangent)
    return jax.tree.map(jnp.add, total, grads), None

  # The scan adds each mini-batch's encoder gradient to the loss's own gradient.
  grads, _ = jax.lax.scan(accumulate, direct, (subs, keys, emb_grads))
  return (loss, aux), grads
