"""Logical axis names -> mesh axes, as data (MaxText's habit), and the shardings
derived from them for any parameter tree."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxembed.errors import ConfigError

# Parameters are FSDP-sharded over their `embed` dimension and tensor-parallel over
# `mlp` and `heads`; activations are split over the batch on both data axes.
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ("activation_batch", ("dcn_data", "data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("layers", None),          # the stacked axis of nn.scan'd blocks
    ("vocab", None),
    ("norm", None),
)

BATCH_AXES = ("dcn_data", "data", "fsdp")


def rules_from_config(rules: Sequence[Sequence] | None) -> tuple[tuple[str, object], ...]:
  if not rules:
    return DEFAULT_RULES
  out = []
  for r in rules:
    if len(r) != 2:
      raise ConfigError(f"sharding.rules: each rule is (logical name, mesh axes), got {r}")
    name, axes = r
    out.append((str(name), tuple(axes) if isinstance(axes, list) else axes))
  return tuple(out)


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


def param_shardings(abstract_boxed, mesh: Mesh, rules):
  """NamedShardings for a tree of `nn.Partitioned` boxes (from `jax.eval_shape` of
  init), checking that each sharded dimension divides by its mesh axes; the error
  names the parameter."""
  specs = nn.get_partition_spec(abstract_boxed)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_boxed)
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_specs = jax.tree.leaves(mesh_specs, is_leaf=lambda x: isinstance(x, P))
  for (path, leaf), spec in zip(flat_shapes, flat_specs):
    for dim, axes in zip(leaf.shape, tuple(spec)):
      size = _axis_size(mesh, axes)
      if dim % size:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise ConfigError(
            f"parameter {name} of shape {leaf.shape}: dimension {dim} is sharded over "
            f"mesh axes {axes} of size {size}, which does not divide it; change the "
            "mesh sizes or the rule for that logical axis in sharding.rules")
  return jax.tree.map(lambda s: NamedSharding(mesh, s), mesh_specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split (the product of the batch axes)."""
  return _axis_size(mesh, BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
