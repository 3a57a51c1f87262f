"""The persistent compilation cache: a second process reuses the first one's compiled
program and computes the same numbers; turned off, nothing is written."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO

PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
from jaxembed import compilation_cache
path = compilation_cache.enable()
@jax.jit
def f(x):
  for _ in range(8):
    x = jnp.tanh(x @ x.T) @ x
  return x.sum(0)
x = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 2048
print(json.dumps({"path": path, "hits": len(hits), "value": f(x).tolist()}))
"""


def run(env):
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", XLA_FLAGS="",
             **env)
  env = {k: v for k, v in env.items() if v is not None}
  out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_cache_and_computes_the_same(tmp_path):
  cache = str(tmp_path / "xla")
  first = run({"JAXEMBED_COMPILATION_CACHE": cache})
  assert first["path"] == cache and first["hits"] == 0
  files = [f for f in os.listdir(cache) if not f.startswith(".")]
  assert files, "nothing was written to the cache"
  second = run({"JAXEMBED_COMPILATION_CACHE": cache})
  assert second["hits"] >= 1
  np.testing.assert_array_equal(second["value"], first["value"])


def test_default_is_under_home_and_off_writes_nothing(tmp_path):
  unset = {"JAXEMBED_COMPILATION_CACHE": None, "JAX_COMPILATION_CACHE_DIR": None}
  on = run(dict(unset, HOME=str(tmp_path / "a")))
  default = tmp_path / "a" / ".cache" / "jaxembed" / "xla"
  assert on["path"] == str(default) and any(default.iterdir())
  off = run(dict(unset, HOME=str(tmp_path / "b"), JAXEMBED_COMPILATION_CACHE="off"))
  assert off["path"] is None and off["hits"] == 0
  assert not (tmp_path / "b" / ".cache").exists()
  np.testing.assert_array_equal(off["value"], on["value"])


def test_not_with_several_cpu_devices(tmp_path, monkeypatch):
  """Cached executables with collectives deadlock on XLA:CPU, so a process with several
  CPU devices (this one: 8) leaves the cache off."""
  import jax
  from jaxembed import compilation_cache
  assert jax.device_count() == 8
  monkeypatch.setenv("JAXEMBED_COMPILATION_CACHE", str(tmp_path / "xla"))
  assert compilation_cache.enable() is None
  assert not (tmp_path / "xla").exists()
