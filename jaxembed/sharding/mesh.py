"""A device mesh built from config: named axes, one of which may be sized -1."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from jaxembed.errors import ConfigError

# dcn_data: data parallelism across slices / nodes (the slow network); the others
# within a slice or node (ICI / NVLink).
AXES = ("dcn_data", "data", "fsdp", "tensor")


def mesh_shape(sizes: Mapping[str, int], num_devices: int,
               field: str = "mesh") -> dict[str, int]:
  """Resolves a -1 size to 'the rest' and checks the product equals the device count."""
  unknown = set(sizes) - set(AXES)
  if unknown:
    raise ConfigError(f"{field}: unknown axes {sorted(unknown)}; valid axes: {list(AXES)}")
  shape = {a: int(sizes.get(a, 1)) for a in AXES}
  free = [a for a, s in shape.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f"{field}: only one axis may be -1, got {free}")
  if any(s == 0 or s < -1 for s in shape.values()):
    raise ConfigError(f"{field}: axis sizes must be positive or -1, got {shape}")
  fixed = math.prod(s for s in shape.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"{field}: fixed axes {shape} (product {fixed}) do not divide "
                        f"the {num_devices} devices")
    shape[free[0]] = num_devices // fixed
  if math.prod(shape.values()) != num_devices:
    raise ConfigError(f"{field}: axes {shape} multiply to {math.prod(shape.values())}, "
                      f"but there are {num_devices} devices; make the product equal "
                      "the device count or set one axis to -1")
  return shape


def make_mesh(sizes: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
  """Devices laid out as dcn_data x data x fsdp x tensor.

  Across TPU slices (devices carry `slice_index`) the dcn_data axis runs over slices
  and the rest within each slice (`create_hybrid_device_mesh`); within one slice
  `jax.make_mesh` orders the devices by the physical topology (a ring on a TPU's
  torus; on CPUs and GPUs, process order, so dcn_data then also splits over hosts).
  The axes are Auto (shardings propagate from the jitted functions' arguments), as
  they were before `jax.make_mesh` defaulted to Explicit.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  dims = [shape[a] for a in AXES]
  n_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if n_slices > 1 and shape["dcn_data"] != n_slices:
    raise ConfigError(f"mesh.dcn_data={shape['dcn_data']}, but the devices span "
                      f"{n_slices} slices; set mesh.dcn_data={n_slices} (data "
                      "parallelism over the slow network between slices)")
  if n_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(
        [1, *dims[1:]], [shape["dcn_data"], 1, 1, 1], devices)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  return jax.make_mesh(dims, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=devices)
