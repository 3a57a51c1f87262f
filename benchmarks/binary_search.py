"""Binary (sign-bit, Hamming) top-k search: the numpy path vs faiss' IndexBinaryFlat,
on the same codes in one run, and whether they return the same top k.

  python benchmarks/binary_search.py [--n 100000] [--dim 384] [--queries 1000] [--k 100]

Random Gaussian vectors (the codes' statistics do not change the cost of a flat scan).
Prints each side's time (best of 3) and, last, `faiss speedup: X` (numpy / faiss).
"""

import argparse
import time

import numpy as np

from jaxembed.evals import quantize


def best_of(fn, repeats=3):
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return min(times), out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=100_000)
  p.add_argument("--dim", type=int, default=384)
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--k", type=int, default=100)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  corpus = rng.standard_normal((a.n, a.dim), dtype=np.float32)
  queries = rng.standard_normal((a.queries, a.dim), dtype=np.float32)
  t_np, got_np = best_of(lambda: quantize.binary_search(queries, corpus, a.k, backend="numpy"))
  t_fa, got_fa = best_of(lambda: quantize.binary_search(queries, corpus, a.k, backend="faiss"))
  same = bool(np.array_equal(got_np, got_fa))
  print(f"{a.queries} queries x {a.n} codes of {a.dim} bits, top {a.k}")
  print(f"numpy: {t_np:.2f} s   faiss: {t_fa:.3f} s   same top-{a.k} in the same order: {same}")
  print(f"faiss speedup: {t_np / t_fa:.1f}")


if __name__ == "__main__":
  main()
