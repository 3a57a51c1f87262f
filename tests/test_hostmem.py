"""The host malloc policy of the entry points (jaxembed/hostmem.py): which variables it
adds, that a process really starts again under them (same process id), and that glibc
then keeps a freed large block mapped, counted in page faults by the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxembed import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_linux = pytest.mark.skipif(not hostmem.on_glibc(), reason="the policy is glibc's")

# Mallocs, fills and frees a 256 MiB block three times, counting the minor page
# faults of each round; prints them with the process id before and after the call.
CHILD = """
import ctypes, json, os, resource, sys
sys.path.insert(0, {root!r})
from jaxembed import hostmem
print(json.dumps({{"before": os.getpid()}}), flush=True)
hostmem.reexec_if_needed()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
faults = []
for _ in range(3):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({{"after": os.getpid(), "faults": faults,
                  "env": {{k: os.environ.get(k) for k in
                          list(hostmem.MALLOC_ENV) + [hostmem.SWITCH]}}}}))
"""


def run_child(tmp_path, **env):
  script = tmp_path / "child.py"
  script.write_text(CHILD.format(root=ROOT))
  base = {k: v for k, v in os.environ.items()
          if k not in hostmem.MALLOC_ENV and k != hostmem.SWITCH}
  # JAX_PLATFORMS=cpu: also on a machine with an accelerator plugin installed.
  out = subprocess.run([sys.executable, str(script)],
                       env={**base, "JAX_PLATFORMS": "cpu", **env},
                       capture_output=True, text=True, timeout=120, check=True).stdout
  return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


@glibc_linux
def test_tuned_environment_adds_only_what_the_user_left_unset():
  # JAX_PLATFORMS=cpu: the answer must not hang on which plugins are installed here.
  env = hostmem.tuned_environment({"PATH": "/bin", "MALLOC_ARENA_MAX": "4",
                                   "JAX_PLATFORMS": "cpu"})
  assert env["PATH"] == "/bin"
  assert env["MALLOC_ARENA_MAX"] == "4"             # the user's choice stays
  assert env["MALLOC_MMAP_MAX_"] == "0"
  assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 32   # above mallopt's int limit
  assert env[hostmem.SWITCH] == "applied"
  assert hostmem.tuned_environment({hostmem.SWITCH: "0"}) is None
  assert hostmem.tuned_environment(env) is None      # no second re-exec
  assert hostmem.tuned_environment(dict(hostmem.MALLOC_ENV)) is None


@glibc_linux
def test_left_off_where_jax_computes_on_an_accelerator(monkeypatch):
  assert hostmem.tuned_environment({"JAX_PLATFORMS": "cpu"}) is not None
  assert hostmem.tuned_environment({"JAX_PLATFORMS": "tpu"}) is None
  assert hostmem.tuned_environment({"JAX_PLATFORMS": "cuda,cpu"}) is None
  assert hostmem.tuned_environment({"JAX_PLATFORMS": "cpu,cuda"}) is not None
  # No platform named: an installed plugin decides (found by name, never imported).
  seen = []
  real = hostmem.importlib.util.find_spec

  def find_spec(name, *args):
    seen.append(name)
    return object() if name == "jax_cuda12_plugin" else real(name, *args)
  monkeypatch.setattr(hostmem.importlib.util, "find_spec", find_spec)
  assert hostmem.tuned_environment({}) is None
  assert "jax_cuda12_plugin" in seen
  monkeypatch.setattr(hostmem.importlib.util, "find_spec",
                      lambda name, *a: None)
  assert hostmem.tuned_environment({}) is not None


@glibc_linux
def test_reexec_keeps_the_process_and_stops_the_page_faults(tmp_path):
  pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
  lines = run_child(tmp_path)
  # The script's start ran twice (once before the exec), in the same process.
  befores = [l["before"] for l in lines if "before" in l]
  (after,) = [l for l in lines if "after" in l]
  assert len(befores) == 2 and set(befores) == {after["after"]}
  assert after["env"] == {**hostmem.MALLOC_ENV, hostmem.SWITCH: "applied"}
  # Rounds after the first reuse the pages: no fresh mapping to fault in.
  assert max(after["faults"][1:]) < 0.02 * pages, after["faults"]

  # Turned off: one start, glibc's defaults, every round faults the block in again.
  lines = run_child(tmp_path, **{hostmem.SWITCH: "0"})
  befores = [l["before"] for l in lines if "before" in l]
  (after,) = [l for l in lines if "after" in l]
  assert len(befores) == 1
  assert after["env"]["MALLOC_MMAP_MAX_"] is None
  assert min(after["faults"][1:]) > 0.5 * pages, after["faults"]
