"""Mesh construction and logical-axis rules."""

from jaxembed.sharding.mesh import AXES, make_mesh, mesh_shape
from jaxembed.sharding.rules import (BATCH_AXES, DEFAULT_RULES, batch_sharding, batch_shards,
                                     param_shardings, replicated, rules_from_config)
