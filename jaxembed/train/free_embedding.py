"""LIMIT's free-embedding experiment (Weller et al. 2025, "On the theoretical
limitations of embedding-based retrieval", Section 4; procedure of the authors'
google-deepmind/limit `code/free_embedding_experiment.py`).

For a dimension d and n documents, every 2-subset of the documents is one query's
relevant set (C(n, 2) queries). Query and document vectors are free parameters,
optimised directly: full-batch multi-positive InfoNCE over all n documents at
temperature 0.1 (dot products of unit vectors), Adam at learning rate 0.01, both sets
renormalised to unit length after every update. Every 50 iterations the top-2
accuracy (fraction of relevant documents in each query's top 2) is measured and the
run stops at 100%; it also stops when the loss has not improved by 1e-5 for 1,000
iterations, or after 100,000 iterations. n is "solved" when the accuracy reached
100%. The critical n of d is the largest solved n, found by the authors' galloping
search from a starting n followed by a binary search (their third phase, a sweep
around the result that does not change it, is left out).

One trial (one n) runs as a single compiled loop on the device. The queries (rows of
the query matrix and of the relevance matrix) are split over the mesh's batch axes
and the documents replicated, so the same code runs the large-d range on a pod.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxembed import sharding as shd
from jaxembed.errors import ConfigError
from jaxembed.losses.contrastive import multi_positive_info_nce


@dataclasses.dataclass(frozen=True)
class Settings:
  """The authors' defaults (DEFAULT_EXPERIMENT_PARAMS of their script)."""
  k: int = 2
  learning_rate: float = 0.01
  temperature: float = 0.1
  max_iterations: int = 100_000
  patience: int = 1000          # iterations without a loss improvement of min_delta
  min_delta: float = 1e-5
  check_every: int = 50         # accuracy is measured every check_every iterations


def relevance(n: int, k: int = 2) -> np.ndarray:
  """[C(n, k), n] 0/1: query i's relevant documents are the i-th k-subset."""
  combos = np.array(list(itertools.combinations(range(n), k)), np.int32).reshape(-1, k)
  rel = np.zeros((len(combos), n), np.float32)
  rel[np.arange(len(combos))[:, None], combos] = 1.0
  return rel


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def top_k_accuracy(q, d, rel, valid, k: int):
  """Fraction of relevant documents that are in their query's top k (valid rows)."""
  _, top = jax.lax.top_k(q @ d.T, k)
  hits = jnp.take_along_axis(rel, top, axis=1).sum(axis=1)
  return jnp.sum(hits * valid) / jnp.maximum(jnp.sum(rel * valid[:, None]), 1.0)


def _trial_fn(s: Settings, mesh: Mesh):
  """A jitted function (q0, d0, rel, valid) -> (solved, iterations, best accuracy)."""
  tx = optax.adam(s.learning_rate)
  rows, rep = shd.batch_sharding(mesh), shd.replicated(mesh)

  def loss_fn(params, rel, valid):
    q, d = params
    return multi_positive_info_nce(q @ d.T / s.temperature, rel, valid)

  def update(carry, _, rel, valid):
    params, opt, best, waited = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, rel, valid)
    updates, new_opt = tx.update(grads, opt, params)
    new = tuple(_unit(p) for p in optax.apply_updates(params, updates))
    stopped = waited >= s.patience          # frozen once patience ran out
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(stopped, x, y), a, b)
    better = loss < best - s.min_delta
    best = jnp.where(stopped | ~better, best, loss)
    waited = jnp.where(stopped, waited, jnp.where(better, 0, waited + 1))
    return (keep(params, new), keep(opt, new_opt), best, waited), None

  def trial(q0, d0, rel, valid):
    params = (q0, d0)
    state = (params, tx.init(params), jnp.float32(jnp.inf), jnp.int32(0))

    def cond(c):
      (_, _, _, waited), it, acc, _ = c
      return (acc < 1.0) & (waited < s.patience) & (it < s.max_iterations)

    def body(c):
      state, it, _, best_acc = c
      state, _ = jax.lax.scan(lambda st, x: update(st, x, rel, valid), state, None,
                              length=s.check_every)
      q, d = state[0]
      acc = top_k_accuracy(q, d, rel, valid, s.k)
      return state, it + s.check_every, acc, jnp.maximum(best_acc, acc)

    state, it, _, best_acc = jax.lax.while_loop(
        cond, body, (state, jnp.int32(0), jnp.float32(0), jnp.float32(0)))
    return best_acc >= 1.0, it, best_acc

  return jax.jit(trial, in_shardings=(rows, rep, rows, rows), out_shardings=rep)


class Search:
  """Trials and critical-n searches for one dimension on one mesh (a compiled trial
  is kept per n)."""

  def __init__(self, d: int, settings: Settings = Settings(), mesh: Mesh | None = None,
               log: Callable[[str], None] = logging.info):
    if d < 1:
      raise ConfigError(f"--dims: d={d} must be at least 1")
    self.d, self.s, self.log = d, settings, log
    self.mesh = mesh if mesh is not None else shd.make_mesh({"data": -1})
    self._trial = _trial_fn(settings, self.mesh)

  def solve(self, n: int, seed: int) -> dict:
    """One trial: optimise C(n, k) queries and n documents from seed's random start."""
    s, shards = self.s, shd.batch_shards(self.mesh)
    rel = relevance(n, s.k)
    nq = len(rel)
    pad = -nq % shards
    rel = np.pad(rel, ((0, pad), (0, 0)))
    valid = np.r_[np.ones(nq, np.float32), np.zeros(pad, np.float32)]
    kq, kd = jax.random.split(jax.random.PRNGKey(seed))
    q0 = _unit(jax.random.normal(kq, (nq + pad, self.d), jnp.float32))
    d0 = _unit(jax.random.normal(kd, (n, self.d), jnp.float32))
    start = time.time()
    solved, iterations, acc = jax.device_get(self._trial(q0, d0, rel, valid))
    out = {"n": n, "solved": bool(solved), "iterations": int(iterations),
           "accuracy": float(acc), "seconds": round(time.time() - start, 2)}
    self.log(f"d={self.d} seed={seed} n={n}: {'solved' if solved else 'not solved'} "
             f"(accuracy {acc:.4f}, {int(iterations)} iterations, {out['seconds']} s)")
    return out

  def lower(self, n: int):
    """The trial at n documents lowered from shapes alone (nothing allocated): checks
    that a size traces and shards before an accelerator is spent on it."""
    nq = math.comb(n, self.s.k)
    nq += -nq % shd.batch_shards(self.mesh)
    f32 = jnp.float32
    return self._trial.lower(jax.ShapeDtypeStruct((nq, self.d), f32),
                             jax.ShapeDtypeStruct((n, self.d), f32),
                             jax.ShapeDtypeStruct((nq, n), f32),
                             jax.ShapeDtypeStruct((nq,), f32))

  def critical_n(self, seed: int, initial_n: int | None = None) -> tuple[int, list]:
    """The largest n solved: galloping from `initial_n` (up by 1, 2, 4, ... while
    solved, or down while not), then a binary search between the last solved and the
    first unsolved n, as the authors' script does. Returns (critical n, trials)."""
    trials: dict[int, dict] = {}

    def ok(n):
      if n not in trials:
        trials[n] = self.solve(n, seed)
      return trials[n]["solved"]

    n0 = max(self.s.k + 1, initial_n or self.d + 1)
    low = high = None
    if ok(n0):
      low, step = n0, 1
      while ok(low + step):
        low, step = low + step, step * 2
      high = low + step
    else:
      high, step = n0, 1
      while high > self.s.k:
        n = max(high - step, self.s.k)
        if ok(n):
          low = n
          break
        high, step = n, step * 2
    if low is None:
      return self.s.k - 1, list(trials.values())
    lo, hi = low + 1, high - 1                # solved: low; unsolved: high
    while lo <= hi:
      mid = (lo + hi) // 2
      if ok(mid):
        low, lo = mid, mid + 1
      else:
        hi = mid - 1
    return low, sorted(trials.values(), key=lambda t: t["n"])


def paper_fit(d: float) -> float:
  """The authors' cubic fit of critical n against d (Weller et al. 2025, Figure 2;
  r^2 = 0.999): -10.5322 + 4.0309 d + 0.0520 d^2 + 0.0037 d^3."""
  return -10.5322 + 4.0309 * d + 0.0520 * d ** 2 + 0.0037 * d ** 3


def fit_cubic(ds, ns) -> np.ndarray:
  """Least-squares cubic through (d, critical n): coefficients c0..c3."""
  ds, ns = np.asarray(ds, np.float64), np.asarray(ns, np.float64)
  if len(ds) < 4:
    raise ConfigError(f"a cubic needs at least 4 dimensions, got {len(ds)}")
  return np.linalg.lstsq(np.vander(ds, 4, increasing=True), ns, rcond=None)[0]

