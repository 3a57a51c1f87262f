"""Exact nearest-neighbour search by inner product that scales: the corpus is split
over the mesh's batch axes and scanned in blocks, so no device ever holds the full
queries x corpus matrix; each device keeps its running top-k and the per-device
results are merged. Ties go to the lower corpus index, on one device or many, so the
sharded result equals the single-device one exactly (same blocks, same arithmetic).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxembed.sharding.rules import BATCH_AXES, batch_shards


def _merge(vals, idx, new_vals, new_idx, k):
  """Top-k of two candidate sets; `vals` must hold the lower corpus indices, so that
  lax.top_k's lower-position-first tie rule means lower-index-first."""
  v = jnp.concatenate([vals, new_vals], axis=1)
  i = jnp.concatenate([idx, new_idx], axis=1)
  top, pos = jax.lax.top_k(v, k)
  return top, jnp.take_along_axis(i, pos, axis=1)


def _scan_blocks(queries, corpus, offset, n_valid, k, block):
  """Running top-k over `corpus` [n, D] in blocks; rows at or past n_valid are ignored."""
  n_blocks = corpus.shape[0] // block
  blocks = corpus.reshape(n_blocks, block, corpus.shape[1])

  def step(carry, b):
    vals, idx = carry
    scores = queries @ blocks[b].T
    index = offset + b * block + jnp.arange(block)
    scores = jnp.where(index[None, :] < n_valid, scores, -jnp.inf)
    bv, bp = jax.lax.top_k(scores, min(k, block))
    vals, idx = _merge(vals, idx, bv, index[bp], k)
    return (vals, idx), None

  init = (jnp.full((queries.shape[0], k), -jnp.inf, queries.dtype),
          jnp.full((queries.shape[0], k), -1, jnp.int32))
  (vals, idx), _ = jax.lax.scan(step, init, jnp.arange(n_blocks))
  return vals, idx


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, *,
                 mesh: Mesh | None = None, block: int = 1024):
  """(scores [Q, k], indices [Q, k]) of the k highest inner products per query, best
  first. With `mesh`, the corpus is split over its batch axes."""
  n, dim = corpus.shape
  n_dev = batch_shards(mesh) if mesh is not None else 1
  block = max(1, min(block, -(-n // n_dev)))
  padded = -(-n // (n_dev * block)) * n_dev * block
  corpus = np.concatenate([corpus, np.zeros((padded - n, dim), corpus.dtype)])
  q = jnp.asarray(queries)
  if mesh is None:
    fn = jax.jit(functools.partial(_scan_blocks, k=k, block=block))
    vals, idx = fn(q, jnp.asarray(corpus), 0, n)
    return np.asarray(vals), np.asarray(idx)

  per_dev = padded // n_dev

  def local(q, shard):
    offset = jax.lax.axis_index(BATCH_AXES) * per_dev
    vals, idx = _scan_blocks(q, shard, offset, n, k, block)
    # Device order is corpus order: gathering keeps lower indices first.
    all_vals = jax.lax.all_gather(vals, BATCH_AXES, axis=1, tiled=True)
    all_idx = jax.lax.all_gather(idx, BATCH_AXES, axis=1, tiled=True)
    top, pos = jax.lax.top_k(all_vals, k)
    return top, jnp.take_along_axis(all_idx, pos, axis=1)

  sharded = jax.device_put(corpus, NamedSharding(mesh, P(BATCH_AXES)))
  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(BATCH_AXES)),
                             out_specs=(P(), P()), check_vma=False))
  vals, idx = fn(q, sharded)
  return np.asarray(vals.addressable_data(0)), np.asarray(idx.addressable_data(0))
