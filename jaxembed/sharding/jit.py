"""Functions that carry their mesh, and the host <-> global array helpers.

`MeshJit` is a jitted function bound to a mesh and its logical-axis rules: every call
(and so the trace) runs inside `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`,
so no caller enters them by hand (T5X's partitioned functions do the same).
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from jaxembed.sharding.rules import batch_sharding


@contextlib.contextmanager
def mesh_scope(mesh: Mesh, rules):
  """The mesh and the logical-axis rules, for code that traces Flax modules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


class MeshJit:
  """`jax.jit(fn, **jit_kwargs)` whose calls run under `mesh` and `rules`."""

  def __init__(self, fn, mesh: Mesh, rules, **jit_kwargs):
    self.mesh, self.rules = mesh, tuple(rules)
    self._jitted = jax.jit(fn, **jit_kwargs)

  def __call__(self, *args, **kwargs):
    with mesh_scope(self.mesh, self.rules):
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with mesh_scope(self.mesh, self.rules):
      return self._jitted.lower(*args, **kwargs)


def mesh_jit(fn, mesh: Mesh, rules, **jit_kwargs) -> MeshJit:
  return MeshJit(fn, mesh, rules, **jit_kwargs)


def host_to_global(tree, shardings):
  """Host arrays (the whole value, on every process) -> global arrays laid out by
  `shardings` (one sharding, or a matching tree); each device takes only its slice."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda a, s: _put(a, s), tree, shardings)
  return jax.tree.map(lambda a: _put(a, shardings), tree)


def _put(a, sharding):
  a = np.asarray(a)
  return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def host_batch_to_global(mesh: Mesh, local_batch):
  """This process's rows of a global batch -> global arrays split over the batch
  axes (the processes' rows concatenated in process order)."""
  sh = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sh, a), local_batch)


def local_value(tree):
  """Replicated global arrays -> numpy, also when other processes hold some devices."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
