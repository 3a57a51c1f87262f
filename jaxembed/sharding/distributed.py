"""Multi-host start-up: `jax.distributed.initialize`, explicit or detected."""

from __future__ import annotations

import logging
import os

import jax


def _cluster_detected() -> bool:
  """True where jax can find its peers by itself (TPU pod slices, SLURM, Open MPI)."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID")
  return bool(hosts) and "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, multihost: bool = False) -> None:
  """Joins the processes of a multi-host job; does nothing for a single process.

  multihost=True asks jax to find its peers itself (TPU pods, SLURM, Open MPI), which
  is what the launch scripts in tpu/ pass. With an explicit coordinator, CPU
  collectives go through gloo, so that several processes on CPUs (tests, or CPU-only
  clusters) exchange data for real.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif multihost or _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d; %d local of %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
