"""XLA's persistent compilation cache, on by default for jaxembed's programs.

Most of a short run's wall time on a CPU is compiling (a 200-step Fashion-MNIST run
spends about half of it there), and the same programs are compiled again by every
seed of a sweep, every resumed run and every `encode` of a new process. jax can keep
compiled executables on disk, keyed by the program, its shapes, shardings, compile
options and the jax/XLA version, so a hit is the same executable a compile would
give.

`enable()` turns that cache on, once per process, before the first compilation:

- the directory is `$JAXEMBED_COMPILATION_CACHE` if set, else jax's own
  `JAX_COMPILATION_CACHE_DIR` if set, else `~/.cache/jaxembed/xla`;
  `JAXEMBED_COMPILATION_CACHE=off` leaves the cache off;
- a size limit (`JAXEMBED_COMPILATION_CACHE_MAX_GB`, default 4) evicts the least
  recently used entries; it also makes jax lock the directory around reads and
  writes, so that processes sharing it (data-parallel tests, several runs at once)
  never read a half-written entry.

jax opens the cache at the first compilation after a directory is set; a later call
with another directory changes nothing in the running process (a warning says so).

Not on a CPU process with several devices (forced host devices, or several processes
joined by jax.distributed): there an executable with collectives loaded from the cache
waits forever at its first all-gather (XLA:CPU with jax 0.10: the rendezvous of the
loaded program never completes, and the process aborts after its timeout). A
single-device CPU process, and GPUs and TPUs, use the cache.
"""

from __future__ import annotations

import logging
import os

import jax
from jax._src import compilation_cache as _cc   # jax's own state: is the cache open yet?

DEFAULT_DIR = "~/.cache/jaxembed/xla"
_OFF = ("off", "0", "false", "no", "none")


def cache_dir() -> str | None:
  """The directory `enable()` would use, or None where the cache is turned off."""
  ours = os.environ.get("JAXEMBED_COMPILATION_CACHE")
  if ours is not None:
    return None if ours.strip().lower() in _OFF or not ours.strip() else os.path.expanduser(ours)
  theirs = jax.config.jax_compilation_cache_dir
  return theirs or os.path.expanduser(DEFAULT_DIR)


def enable() -> str | None:
  """Turns the persistent compilation cache on (see the module's text); returns its
  directory, or None where it stays off."""
  path = cache_dir()
  if path is None:
    return None
  if jax.default_backend() == "cpu" and jax.device_count() > 1:
    logging.info("compilation cache not used: %d CPU devices (cached programs with "
                 "collectives deadlock on XLA:CPU)", jax.device_count())
    return None
  if getattr(_cc, "_cache_initialized", False):
    current = jax.config.jax_compilation_cache_dir
    if current != path:
      logging.warning("compilation cache stays at %s in this process (asked for %s): "
                      "jax opened it before", current, path)
    return current
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s)", path, e)
    return None
  gigabytes = float(os.environ.get("JAXEMBED_COMPILATION_CACHE_MAX_GB", "4"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", int(gigabytes * 2**30))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # Programs that compile in under half a second are not worth a file.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path
