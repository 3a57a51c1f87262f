r"""KaLM-Embedding-V2's two training techniques that the library has, each against its
ablation on the default job, by the evidence protocol (test halves, paired bootstrap
intervals over seeds and queries, verdicts by the rule of jaxembed/evals/stats.py).

The claim (Zhao et al. 2025, "KaLM-Embedding-V2", abstract): a focal-style reweighting
"concentrates learning on difficult samples" and online hard-negative mixing
"continuously enriches hard negatives without expensive offline mining"; both are
among the training techniques credited for the model's MTEB scores. Stated before the
runs, each tested as "arm above default", no effect size (the paper's ablation numbers
were not available offline):
  default   configs/minilm_wordnet_2d.py (the default job: pairs over the 36 cells +
            the frozen pretrained model as teacher), loss.name=contrastive with
            focal_gamma=0 and no mixing (the same function as its info_nce, checked)
  focal     + loss.focal_gamma=2: each pair's loss weighted by (1 - p_pos)^2, p_pos the
            positive's softmax probability (gamma 2 is Lin et al.'s focal-loss default;
            KaLM's own gamma could not be checked offline)
  mix       + loss.mix_negatives=4 from loss.mix_hardest=4: per query, four convex
            mixtures of two of its four hardest in-batch negatives, renormalised, as
            extra negatives (MoCHi's rule; KaLM's exact rule could not be checked)
The same data order, batch (32), steps (400) and teacher per seed in every arm.
Sets: man pages, docstrings (out of domain), WordNet (in domain); MRR@10 per test query
at the cells (6, 384), (6, 32), (2, 64).

  python -m experiments.kalm_study --out=runs/kalm_study --seeds=1
  (then --seeds=1,2 and --seeds=1,2,3: each command trains one seed's arms)

--baseline_runs may name a folder whose default_s<seed> (or single_s<seed>, the
multivector study's single-vector arm: the same config and seed) is reused instead of
training the default arm again.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (CELLS, SET_NAMES as names, evaluate_cells as evaluate,
                                  machine, test_tasks, train, verdict_section, wall_lines)

CONFIG = "configs/minilm_wordnet_2d.py"
ARMS = {"default": ("--config.loss.name=contrastive",),
        "focal": ("--config.loss.name=contrastive", "--config.loss.focal_gamma=2.0"),
        "mix": ("--config.loss.name=contrastive", "--config.loss.mix_negatives=4",
                "--config.loss.mix_hardest=4")}
SETS = ("manpages", "docstrings", "wordnet")
COMPARISONS = (("focal", "default", +1), ("mix", "default", +1))

_OUT = flags.DEFINE_string("out", "runs/kalm_study", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "training seeds")
_BASELINE = flags.DEFINE_string("baseline_runs", "",
                                "a folder with the default arm's runs to reuse")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def baseline(out: str, seed: int) -> str | None:
  """A finished default-arm run for `seed` in --baseline_runs, if there is one."""
  for name in (f"default_s{seed}", f"single_s{seed}"):
    path = os.path.join(_BASELINE.value, name)
    if _BASELINE.value and os.path.exists(os.path.join(path, "metrics.json")):
      return path
  return None


def run(folder, results: dict) -> None:
  seeds = [int(s) for s in _SEEDS.value]
  wall = dict(results.get("train_wall_s", {}))
  paths = {}
  for seed in seeds:
    for arm, overrides in ARMS.items():
      reuse = baseline(folder.out, seed) if arm == "default" else None
      if reuse:
        paths[arm, seed] = reuse
        continue
      took = train(folder.out, arm, seed, CONFIG, overrides)
      if took:
        wall[f"{arm}_s{seed}"] = round(took, 1)
      paths[arm, seed] = os.path.join(folder.out, f"{arm}_s{seed}")
  tasks = test_tasks()
  results.update({"k": 10, "split": "test", "seeds": seeds, "sets": list(SETS),
                  "cells": [list(c) for c in CELLS], "machine": machine(),
                  "config": CONFIG, "arms": {a: list(o) for a, o in ARMS.items()},
                  "train_wall_s": wall,
                  "queries": {n: len(t.queries) for n, t in tasks.items()}})
  rr = results.setdefault("rr", {})
  for (arm, seed), path in paths.items():
    if str(seed) not in rr.get(arm, {}):
      rr.setdefault(arm, {})[str(seed)] = evaluate(path, tasks)
      folder.save(results)
  folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  cells = [f"{l}_{d}" for l, d in results["cells"]]
  per_seed = lambda arm, n, cell: np.array([results["rr"][arm][s][n][cell] for s in seeds])
  lines = [f"Test halves (eval.split=test), MRR@{results['k']} x100, mean ± sample sd over "
           f"seeds {', '.join(seeds)}; {results['machine']}.", "",
           "| set (test queries) | cell | default | focal (γ = 2) | mix (4 of 4 hardest) |",
           "|---|---|---|---|---|"]
  for n in results["sets"]:
    for cell in cells:
      row = [f"{names[n]} ({results['queries'][n]})", f"({cell.replace('_', ', ')})"]
      for arm in ARMS:
        means = 100 * per_seed(arm, n, cell).mean(axis=1)
        row.append(f"{means.mean():.1f} ± {stats.sample_sd(means):.1f}")
      lines.append("| " + " | ".join(row) + " |")
  lines += verdict_section(COMPARISONS, results["sets"], cells, per_seed)
  return "\n".join(lines + wall_lines(results)) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
