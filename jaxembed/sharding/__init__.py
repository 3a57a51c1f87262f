"""Mesh construction, logical-axis rules, and functions that carry their mesh."""

from jaxembed.sharding.jit import (MeshJit, host_batch_to_global, host_to_global,
                                   local_value, mesh_jit, mesh_scope)
from jaxembed.sharding.mesh import AXES, make_mesh, mesh_shape
from jaxembed.sharding.rules import (BATCH_AXES, DEFAULT_RULES, batch_sharding, batch_shards,
                                     param_shardings, replicated, rules_from_config)
