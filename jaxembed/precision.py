"""`model.dtype="auto"`: bfloat16 matmuls where they are faster, float32 elsewhere.

GPUs and TPUs have bfloat16 matrix units: bfloat16. On a CPU it depends on the chip
(AMX or AVX512-BF16 make bfloat16 matmuls faster; without them XLA converts and runs
them slower than float32: 0.62 of float32's train rate on an Intel Xeon without either,
benchmarks/README.md), so the choice is measured, not guessed from the name: a matmul
of the encoders' usual shape ([256, 768] x [768, 3072], float32 accumulation) is timed
in each dtype, and bfloat16 is taken when it is at least 10% faster. The result is
kept per CPU (model name, bf16/AMX flags, jax version) in
`~/.cache/jaxembed/precision.json` (`$JAXEMBED_PRECISION_CACHE`), so the measurement
(about a second) runs once per machine.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp

DTYPES = ("auto", "float32", "bfloat16")
DEFAULT_CACHE = "~/.cache/jaxembed/precision.json"
FASTER = 0.9        # bfloat16 when its time is below this fraction of float32's


def _cpu_signature() -> str:
  model, flags = "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
          model = value.strip()
        elif key.strip() == "flags" and not flags:
          flags = {x for x in value.split() if "bf16" in x or x.startswith("amx")}
  except OSError:
    pass
  return f"{model} [{' '.join(sorted(flags))}] jax {jax.__version__}"


def measure(repeats: int = 5) -> dict:
  """Seconds of the best of `repeats` [256, 768] x [768, 3072] matmuls per dtype."""
  x = jnp.ones((256, 768), jnp.float32)
  w = jnp.ones((768, 3072), jnp.float32) * 0.01
  out = {}
  for name, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
    f = jax.jit(lambda a, b, dt=dt: jnp.dot(a.astype(dt), b.astype(dt),
                                            preferred_element_type=jnp.float32))
    f(x, w).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      t = time.perf_counter()
      f(x, w).block_until_ready()
      best = min(best, time.perf_counter() - t)
    out[name] = best
  return out


def auto_dtype(backend: str | None = None, cache: str | None = None) -> tuple[str, str]:
  """(dtype, why) for model.dtype='auto' on `backend` (default: jax's)."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "bfloat16", f"{backend}: bfloat16 matrix units"
  path = os.path.expanduser(cache or os.environ.get("JAXEMBED_PRECISION_CACHE",
                                                    DEFAULT_CACHE))
  key = _cpu_signature()
  known = {}
  try:
    with open(path) as f:
      known = json.load(f)
  except (OSError, ValueError):
    known = {}
  if not isinstance(known.get(key), dict) or "float32" not in known[key]:
    known[key] = measure()
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path + ".tmp", "w") as f:
        json.dump(known, f, indent=1)
      os.replace(path + ".tmp", path)
    except OSError:
      pass          # a read-only home: measured again next time
  t = known[key]
  dtype = "bfloat16" if t["bfloat16"] < FASTER * t["float32"] else "float32"
  return dtype, (f"{key}: a bfloat16 matmul takes {t['bfloat16'] / t['float32']:.2f} x "
                 "float32's time")


def resolve(dtype: str, field: str = "model.dtype") -> str:
  """'' / 'float32' / 'bfloat16' as given; 'auto' measured (logged)."""
  if dtype != "auto":
    return dtype
  chosen, why = auto_dtype()
  logging.info("%s=auto: %s (%s)", field, chosen, why)
  return chosen
