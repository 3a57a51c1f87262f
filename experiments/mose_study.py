r"""Multi-exit self-distillation (MoSE / ModularStarEncoder) redone by the evidence
protocol, with the control the first study lacked: the same extra loss weight on the
shallower exits without any deeper exit guiding them.

The claim (Gurioli et al. 2025, abstract): exits at chosen layers, "allowing higher
layers to guide earlier layers during training", improve the lower layers'
representations "at no extra training cost". Stated before the runs, at exits 2 and 4
(the shallower exits the guidance is for), each as "b above a", no effect size:
  self_distill − exits           the deeper→shallower KL term helps the shallow exits
  self_distill − weight_control  ... and not merely by weighting them more
Arms (configs/exit_distillation.py, all-MiniLM-L6-v2, exits {2, 4, 6} at width 384,
InfoNCE at scale 20 on WordNet pairs, batch 32, 200 steps, lr 5e-5, 40 warmup steps;
the same data order per seed in every arm):
  exits           the mean of the exits' InfoNCE
  self_distill    + 1 x the mean over exits 2, 4 of KL(next deeper exit || exit), the
                  deeper one detached
  weight_control  + 1 x the mean over exits 2, 4 of the exit's own InfoNCE
                  (loss.exit_teacher=none): the same weight, no guidance
Fresh seeds 3, 4, 5 (the first study's 0-2 chose nothing, but these are new runs at a
new step count). Scored on the test halves: man pages, docstrings (out of domain),
WordNet; MRR@10 per test query at (2, 384), (4, 384), (6, 384).

  python -m experiments.mose_study --out=runs/mose_study --seeds=3,4,5

Trains <out>/<arm>_s<seed> (a finished run is kept), then writes <out>/results.json and
<out>/table.md (`--table_only`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (SET_NAMES as names, evaluate_cells, machine, test_tasks,
                                  train, verdict_rows, wall_lines)

ARMS = ("exits", "self_distill", "weight_control")
CELLS = ((2, 384), (4, 384), (6, 384))
STEPS = 200
SETS = ("manpages", "docstrings", "wordnet")
COMPARISONS = (("self_distill", "exits"), ("self_distill", "weight_control"))
CLAIMED_EXITS = ("2_384", "4_384")

_OUT = flags.DEFINE_string("out", "runs/mose_study", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["3", "4", "5"], "training seeds")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def final_losses(workdir: str) -> list:
  """(step, loss) of the run's logged training losses: its curve."""
  out = []
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row and "step" in row:
        out.append([int(row["step"]), round(float(row["loss"]), 4)])
  return out


def run(folder, results: dict) -> None:
  seeds = [int(s) for s in _SEEDS.value]
  wall = dict(results.get("train_wall_s", {}))
  for seed in seeds:
    for arm in ARMS:
      took = train(folder.out, arm, seed, f"configs/exit_distillation.py:arm={arm}",
                   (f"--config.train.steps={STEPS}",))
      if took:
        wall[f"{arm}_s{seed}"] = round(took, 1)
  tasks = test_tasks()
  results.update({"k": 10, "split": "test", "seeds": seeds, "sets": list(SETS),
                  "cells": [list(c) for c in CELLS], "steps": STEPS, "machine": machine(),
                  "train_wall_s": wall,
                  "queries": {n: len(t.queries) for n, t in tasks.items()}})
  rr, curves = results.setdefault("rr", {}), results.setdefault("loss_curve", {})
  for seed in map(str, seeds):
    for arm in ARMS:
      if seed in rr.get(arm, {}):
        continue
      path = os.path.join(folder.out, f"{arm}_s{seed}")
      rr.setdefault(arm, {})[seed] = evaluate_cells(path, tasks, CELLS)
      curves.setdefault(arm, {})[seed] = final_losses(path)
      folder.save(results)
  folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  cells = [f"{l}_{d}" for l, d in results["cells"]]
  per_seed = lambda arm, n, c: np.array([results["rr"][arm][s][n][c] for s in seeds])
  lines = [f"Test halves, MRR@{results['k']} x100, mean ± sample sd over seeds "
           f"{', '.join(seeds)}; {results['steps']} steps per run; {results['machine']}.",
           "", "| set (test queries) | exit | " + " | ".join(ARMS) + " |",
           "|---|---|" + "---|" * len(ARMS)]
  for n in results["sets"]:
    for c in cells:
      row = [f"{names[n]} ({results['queries'][n]})", c.split("_")[0]]
      for arm in ARMS:
        means = 100 * per_seed(arm, n, c).mean(axis=1)
        row.append(f"{means.mean():.1f} ± {stats.sample_sd(means):.1f}")
      lines.append("| " + " | ".join(row) + " |")
  lines += ["", "Paired differences b − a at the shallow exits, MRR@10 x100 (95% bootstrap "
            "interval over seeds, then queries; the claim: b > a, no effect size):", "",
            "| b − a, set, exit | claim | Δ | 95% interval | verdict |",
            "|---|---|---|---|---|"]
  lines += verdict_rows([(b, a, +1) for b, a in COMPARISONS], results["sets"],
                        CLAIMED_EXITS, per_seed, label=lambda c: f"exit {c.split('_')[0]}")
  curves = results.get("loss_curve", {})
  if curves:
    lines += ["", "Training loss (the arm's whole objective), mean over seeds and over "
              "windows of five logged steps: the first, the middle and the last window:",
              ""]
    for arm in ARMS:
      rows = [np.array(curves[arm][s]) for s in seeds if s in curves.get(arm, {})]
      if rows:
        n = len(rows[0])
        window = lambda a: np.mean([r[a:a + 5, 1].mean() for r in rows])
        steps = lambda a: f"steps {int(rows[0][a, 0])}–{int(rows[0][min(a + 4, n - 1), 0])}"
        lines.append(f"- {arm}: " + ", ".join(
            f"{window(a):.2f} ({steps(a)})" for a in (0, max(n // 2 - 2, 0), max(n - 5, 0))))
  return "\n".join(lines + wall_lines(results)) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
