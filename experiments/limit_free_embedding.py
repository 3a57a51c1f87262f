r"""LIMIT's free-embedding experiment (Weller et al. 2025): the critical n of each
embedding dimension d, against the paper's cubic fit.

  python -m experiments.limit_free_embedding --dims=4,8,12 --seeds=3
  python -m experiments.limit_free_embedding \
      --config=configs/limit_free_embedding.py:accelerator   # d = 32 ... 64


For each d and seed (0, 1, ...), optimises free query and document vectors for every
2-subset of n documents and finds the largest n whose every query gets exactly its
two documents as its top 2 (`jaxembed/train/free_embedding.py`: the authors'
procedure). Prints one line per d, `d=<d> critical_n=<median> seeds=<list>`; writes
<out>/results.json after every (d, seed) (a rerun skips what is there) and
<out>/table.md (`--table_only` remakes it from results.json): each d's critical n
beside the paper's fit, and the cubic fitted to ours. The queries are split over all
devices (`--xla_force_host_platform_device_count` on a CPU; every chip on a pod).
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments.results_io import run_or_table
from jaxembed.train import free_embedding as fe

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/limit_free_embedding.py[:accelerator]: dims and seeds")
_DIMS = flags.DEFINE_list("dims", ["4", "8", "12"],
                          "embedding dimensions (overrides --config's)")
_SEEDS = flags.DEFINE_integer("seeds", 3, "seeds per dimension (0, 1, ...; overrides "
                              "--config's)")
_OUT = flags.DEFINE_string("out", "runs/limit_free_embedding",
                           "where results.json and table.md go")
_START = flags.DEFINE_enum("start", "fit", ["fit", "d"],
                           "the galloping search's first n: the paper's fit at d "
                           "(fewer trials) or d + 1")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def table(results: dict) -> str:
  rows = sorted(results.values(), key=lambda r: r["d"])
  by_d: dict[int, list] = {}
  for r in rows:
    by_d.setdefault(r["d"], []).append(r)
  lines = ["| d | critical n (median) | per seed | paper's fit | ours / fit | wall (s) |",
           "|---|---|---|---|---|---|"]
  for d, runs in by_d.items():
    ns = [r["critical_n"] for r in sorted(runs, key=lambda r: r["seed"])]
    med, fit = float(np.median(ns)), fe.paper_fit(d)
    lines.append(f"| {d} | {med:g} | {', '.join(map(str, ns))} | {fit:.1f} | "
                 f"{med / fit:.2f} | {sum(r['seconds'] for r in runs):.0f} |")
  ds = sorted(by_d)
  if len(ds) >= 4:
    c = fe.fit_cubic(ds, [np.median([r["critical_n"] for r in by_d[d]]) for d in ds])
    lines += ["", f"Cubic fitted to our medians: {c[0]:.4f} + {c[1]:.4f} d + "
              f"{c[2]:.4f} d^2 + {c[3]:.4f} d^3 (paper: -10.5322 + 4.0309 d + "
              "0.0520 d^2 + 0.0037 d^3)."]
  return "\n".join(lines) + "\n"


def run_all(folder, results) -> None:
  dims, seeds = [int(x) for x in _DIMS.value], _SEEDS.value
  if _CONFIG.value is not None:
    dims = dims if flags.FLAGS["dims"].present else list(_CONFIG.value.dims)
    seeds = seeds if flags.FLAGS["seeds"].present else int(_CONFIG.value.seeds)
  for d in dims:
    search = fe.Search(d, log=logging.info)
    for seed in range(seeds):
      key = f"d{d}_s{seed}"
      if key in results:
        continue
      start = time.time()
      initial = max(3, round(fe.paper_fit(d))) if _START.value == "fit" else d + 1
      n, trials = search.critical_n(seed, initial_n=initial)
      results[key] = {"d": d, "seed": seed, "critical_n": n, "initial_n": initial,
                      "seconds": round(time.time() - start, 1), "trials": trials}
      folder.save(results)
    ns = [results[f"d{d}_s{s}"]["critical_n"] for s in range(seeds)]
    print(f"d={d} critical_n={float(np.median(ns)):g} seeds={ns}", flush=True)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run_all)


if __name__ == "__main__":
  app.run(main)
