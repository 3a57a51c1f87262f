"""Compiled per-device temporary memory of the plain vs the blockwise (ring) InfoNCE
loss and gradient, as the global batch grows, on 8 devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.blockwise_memory

Nothing is run, only compiled: `.compile().memory_analysis().temp_size_in_bytes` is
XLA's own figure for the scratch memory one device needs.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from benchmarks import tiny  # noqa: E402
from jaxembed import sharding as shd  # noqa: E402
from jaxembed.losses import info_nce  # noqa: E402
from jaxembed.losses.blockwise import ring_info_nce  # noqa: E402


def temp_bytes(mesh, global_batch: int, dim: int, blockwise: bool, chunk: int = 512) -> int:
  sh = NamedSharding(mesh, P(shd.BATCH_AXES))
  x = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=sh)
  if blockwise:
    loss = lambda q, d: ring_info_nce(q, d, mesh=mesh, chunk=chunk)
  else:
    loss = lambda q, d: info_nce(q, d)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return step.lower(x, x).compile().memory_analysis().temp_size_in_bytes


def table(batches=tiny.size((8192, 16384, 32768, 65536), (64, 128)), dim=64,
          chunk=tiny.size(512, 8)):
  mesh = shd.make_mesh(dict(data=-1))
  rows = []
  for b in batches:
    rows.append((b, temp_bytes(mesh, b, dim, False, chunk),
                 temp_bytes(mesh, b, dim, True, chunk)))
  return rows


def main():
  rows = table()
  print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), dim 64, float32")
  print(f"{'global batch':>12} {'plain MiB':>12} {'blockwise MiB':>14}")
  for b, plain, ring in rows:
    print(f"{b:>12d} {plain / 2**20:>12.1f} {ring / 2**20:>14.2f}")
  (b0, p0, r0), (b1, p1, r1) = rows[0], rows[-1]
  print(f"growth {b0} -> {b1} ({b1 // b0}x batch): plain {p1 / p0:.1f}x, "
        f"blockwise {r1 / r0:.1f}x")


if __name__ == "__main__":
  main()
