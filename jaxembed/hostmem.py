"""Host memory policy for jobs that compute on the CPU: keep freed memory for reuse.

An XLA CPU executable takes its scratch space (every intermediate of the step: 1.4 GB
for the MiniLM train step at 32 pairs x 64 tokens) from malloc at each call and frees
it after. glibc serves a block that large from a fresh mmap and unmaps it on free, so
each step the kernel maps and zeroes the whole region again, one 4 KiB page fault at
a time (benchmarks/README.md counts the faults and their share of the step). With

  MALLOC_ARENA_MAX=1          every thread allocates from the main heap,
  MALLOC_MMAP_MAX_=0          large blocks come from that heap, not from mmap,
  MALLOC_TRIM_THRESHOLD_=64G  freed memory stays mapped for the next step,

the second step onwards reuses the same pages (benchmarks/README.md). These are read
once, when the process starts (`mallopt` cannot set a trim threshold above 2 GiB, which the freed top of
the heap exceeds here), so the command-line entry points call `reexec_if_needed()`
first: it starts the same command again, same process id, with them added to its
environment. Variables the user set stay as they are; JAXEMBED_HOST_MALLOC=0 turns
the whole thing off, and it is left off where jax will compute on an accelerator
(JAX_PLATFORMS names another platform first, or none is named and a TPU, CUDA or ROCm
plugin is installed): there the scratch space lives on the device. The cost: the
process keeps its peak heap until it exits.

The module itself uses the standard library only; imported through the `jaxembed`
package it comes after jax's import, so a restart costs about a second.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

SWITCH = "JAXEMBED_HOST_MALLOC"   # "0": leave malloc alone; "applied": done (re-exec'd)
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
# jax's accelerator plugins (and the PJRT plugin namespace), found without importing.
ACCELERATOR_MODULES = ("libtpu", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin",
                       "jax_rocm7_plugin", "jax_rocm60_plugin")


def on_glibc() -> bool:
  """Whether this is Linux with glibc, whose malloc reads the variables."""
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def computes_on_cpu(environ) -> bool:
  """Whether jax will pick the CPU, judged before jax is imported: the first platform
  JAX_PLATFORMS names, else whether no accelerator plugin is installed."""
  named = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "").strip()
  if named:
    return named.split(",")[0].strip().lower() == "cpu"
  return not any(importlib.util.find_spec(m) for m in ACCELERATOR_MODULES)


def tuned_environment(environ) -> dict | None:
  """The environment to start again with, or None when nothing is to change: turned
  off, already applied, not glibc, an accelerator ahead, or every variable already
  set by the user."""
  if environ.get(SWITCH) in ("0", "applied"):
    return None
  if not on_glibc() or not computes_on_cpu(environ):
    return None
  missing = {k: v for k, v in MALLOC_ENV.items() if k not in environ}
  if not missing:
    return None
  return {**environ, **missing, SWITCH: "applied"}


def reexec_if_needed() -> None:
  """Replaces this process with the same command under `tuned_environment` (a no-op
  when that is None). Call it first thing in a `__main__` block: whatever ran before
  runs again."""
  env = tuned_environment(os.environ)
  argv = getattr(sys, "orig_argv", None)
  if env is None or len(argv or ()) < 2:   # no script to run again (a REPL)
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
