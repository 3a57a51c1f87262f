"""Every benchmark runs, at a tiny size (JAXEMBED_BENCH_TINY=1, benchmarks/tiny.py):
speed is not tested here, but a config or API change that breaks a benchmark fails
this test instead of leaving the script to rot (the comparison with
sentence-transformers once crashed on a config change that nothing ran). A new
script in benchmarks/ must be added to RUNS."""

import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, user_env, xla_flags

PY = sys.executable
# script -> (command, a regular expression its output must match; extra environment)
RUNS = {
    "gpu.sh": (["bash", "benchmarks/gpu.sh", "--dry-run", "--dtype=float32"],
               r"train: batch 8 pairs.*\n(.*\n)*.*GFLOP/step.*MFU", {"PYTHON": PY}),
    "accelerator.py": None,      # run by gpu.sh
    "binary_search.py": ([PY, "benchmarks/binary_search.py", "--n", "2000", "--dim", "64",
                          "--queries", "10", "--k", "5"], r"faiss speedup: [0-9.]+", {}),
    "encode_corpus.py": ([PY, "benchmarks/encode_corpus.py"],
                         r"throughput ratio \(ours / peer\): [0-9.]+", {}),
    "blockwise_memory.py": ([PY, "-m", "benchmarks.blockwise_memory"],
                            r"growth 64 -> 128 \(2x batch\)", {"XLA_FLAGS": xla_flags(8)}),
    "grid_overhead.py": ([PY, "benchmarks/grid_overhead.py", "--steps=2"],
                         r"grid/plain step time ratio: [0-9.]+", {}),
    "nan_check.py": ([PY, "benchmarks/nan_check.py", "--steps=2"],
                     r"checked/unchecked step time ratio: [0-9.]+", {}),
    "packing.py": ([PY, "benchmarks/packing.py", "--rounds=1", "--steps=2"],
                   r"step time ratio \(packed / padded\): [0-9.]+", {}),
    "profile_step.py": ([PY, "benchmarks/profile_step.py", "--rounds=1"],
                        r"full step: [0-9]+ ms(.*\n)*optimizer", {}),
    "vs_sentence_transformers.py": (
        [PY, "benchmarks/vs_sentence_transformers.py", "--rounds=1", "--peer-malloc=same"],
        r"train ratio: [0-9.]+\nencode ratio: [0-9.]+", {}),
    # PyLate is not in the test venv (it pins sentence-transformers 5.3): jaxembed's side
    # runs; the peer's side was run by hand (benchmarks/README.md).
    "vs_pylate.py": ([PY, "benchmarks/vs_pylate.py", "--rounds=1"],
                     r"jaxembed train: [0-9.]+ pairs/s", {}),
    "tiny.py": None,             # the helper behind JAXEMBED_BENCH_TINY
    "__init__.py": None,
}


def test_every_benchmark_is_run():
  scripts = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "benchmarks", "*"))
             if p.endswith((".py", ".sh"))}
  assert scripts == set(RUNS), f"add {sorted(scripts - set(RUNS))} to RUNS"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(k for k, v in RUNS.items() if v))
def test_the_benchmark_runs_at_a_tiny_size(script, tfds_dir):
  cmd, pattern, env = RUNS[script]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=user_env({"JAXEMBED_BENCH_TINY": "1",
                                     "JAXEMBED_BENCH_TFDS_DIR": tfds_dir, **env}))
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  assert re.search(pattern, out.stdout), out.stdout[-3000:]
