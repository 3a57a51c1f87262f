r"""Starbucks against 2DMSE and separately trained sub-models at 400 steps, by the
evidence protocol (test halves, fresh seeds, paired bootstrap intervals over seeds and
queries, verdicts by the rule of jaxembed/evals/stats.py). It redoes the 80-step
comparison of experiments/matryoshka_schemes.py, where 2DMSE's sampling reached each
shallow layer about 16 times.

The claim (Zhuang et al. 2024, Starbucks; their Table A1, STS-B Spearman on BERT-base,
from the smallest pair to the full model): separately trained sub-models 0.7134 →
0.8411, 2DMSE 0.7197 → 0.8196, Starbucks 0.7455 → 0.8274. Stated before the runs, per
diagonal cell, direction only (the paper's numbers are STS-B Spearman, not MRR on
these sets):
  starbucks > 2dmse       at every cell (above at both of the paper's endpoints)
  starbucks > separate    at (1, 16) … (5, 256) (above at the smallest pair)
  starbucks < separate    at (6, 384) (the separate full model leads the paper's table)

  python -m experiments.schemes_study --out=runs/schemes_study --arms=starbucks,2dmse --seeds=3
  python -m experiments.schemes_study --out=runs/schemes_study --arms=separate --seeds=3
  (then seeds 4 and 5: each command fits 25 minutes on 2 CPU cores)

The arms are configs/matryoshka_schemes.py's with steps=400 (all-MiniLM-L6-v2, the
pair loss on WordNet pairs, batch 32, one encoder pass per step, the same data order
per seed in every arm): starbucks (the six diagonal pairs (1, 16) (2, 32) (3, 64)
(4, 128) (5, 256) (6, 384), Starbucks' BERT-base pairs halved, plus the KL to the full
model's in-batch distribution); 2dmse (per step a random shallow layer and dim, the four
losses and the KL alignment); separate (one model per diagonal cell, trained at it
alone). Every model is scored on the test halves (eval.split=test, every test query) of
WordNet, man pages and docstrings at the diagonal cells (a separate model at its own),
MRR@10 per query.

Writes <out>/results.json and <out>/table.md (made from results.json alone:
`--table_only`); finished runs and scores are kept.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (SET_NAMES, cell_tables, evaluate_cells, finished_seeds,
                                  machine, seed_scores, seeds_phrase, test_tasks, train,
                                  unfinished_note, verdict_rows, wall_lines)

CONFIG = "configs/matryoshka_schemes.py"
ARMS = ("starbucks", "2dmse", "separate")

_OUT = flags.DEFINE_string("out", "runs/schemes_study", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["3", "4", "5"], "training seeds")
_ARMS = flags.DEFINE_list("arms", list(ARMS), f"arms to train (of {', '.join(ARMS)})")
_STEPS = flags.DEFINE_integer("steps", 400, "training steps of every run")
_VARIANT = flags.DEFINE_enum("variant", "", ["", "accelerator", "smoke"],
                             "config variant: '' (2 CPU cores), accelerator, smoke")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "where datasets are built (default: the "
                                "config's data.tfds_dir)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def pairs(variant: str) -> tuple:
  """The diagonal cells of the config `variant`."""
  from jaxembed.configs import matryoshka_schemes
  return matryoshka_schemes.SMOKE_PAIRS if variant == "smoke" else \
      matryoshka_schemes.PAIRS


def comparisons(cells) -> list:
  """(b, a, direction, cells) of the claims above."""
  return [("starbucks", "2dmse", +1, cells), ("starbucks", "separate", +1, cells[:-1]),
          ("starbucks", "separate", -1, cells[-1:])]


def config_arg(arm: str, cell, steps: int, variant: str) -> str:
  """configs/matryoshka_schemes.py's argument for one run."""
  parts = [f"arm={arm}", f"steps={steps}", variant]
  if cell:
    parts.insert(1, f"cell={cell[0]}:{cell[1]}")
  return ",".join(filter(None, parts))


def run(folder, results: dict) -> None:
  unknown = sorted(set(_ARMS.value) - set(ARMS))
  if unknown:
    raise SystemExit(f"error: --arms: unknown {unknown}; valid: {list(ARMS)}")
  settings = {"config": CONFIG, "steps": _STEPS.value, "variant": _VARIANT.value}
  if results.get("rr") and results.get("settings") != settings:
    raise SystemExit(f"error: {folder.path} holds runs made with "
                     f"{results.get('settings')}, not {settings}: use another --out")
  cells = pairs(_VARIANT.value)
  # (a smoke run, for the tests: 100 queries a set)
  tasks = test_tasks(_TFDS_DIR.value or None, 100 if _VARIANT.value == "smoke" else None)
  results.update({"k": 10, "split": "test", "settings": settings, "machine": machine(),
                  "sets": list(tasks), "cells": [list(c) for c in cells],
                  "queries": {n: len(t.queries) for n, t in tasks.items()}})
  rr = results.setdefault("rr", {})
  wall = results.setdefault("train_wall_s", {})
  extra = [f"--config.data.tfds_dir={_TFDS_DIR.value}"] if _TFDS_DIR.value else []
  for seed in [int(s) for s in _SEEDS.value]:
    for arm in [a for a in ARMS if a in _ARMS.value]:
      runs = ([(f"separate_{l}x{d}", (l, d), [(l, d)]) for l, d in cells]
              if arm == "separate" else [(arm, None, cells)])
      for name, cell, scored in runs:
        arg = config_arg(arm, cell, _STEPS.value, _VARIANT.value)
        took = train(folder.out, name, seed, f"{CONFIG}:{arg}", extra)
        if took:
          wall[f"{name}_s{seed}"] = round(took, 1)
          folder.save(results)
        got = rr.setdefault(arm, {}).setdefault(str(seed), {})
        if not all(f"{l}_{d}" in got.get(n, {}) for n in tasks for l, d in scored):
          start = time.time()
          path = os.path.join(folder.out, f"{name}_s{seed}")
          for n, per_cell in evaluate_cells(path, tasks, cells=scored).items():
            got.setdefault(n, {}).update(per_cell)
          results.setdefault("eval_wall_s", {})[f"{name}_s{seed}"] = round(
              time.time() - start, 1)
          folder.save(results)
  folder.save(results)


def table(results: dict) -> str:
  rr = results["rr"]
  sets = results["sets"]
  cells = [f"{l}_{d}" for l, d in results["cells"]]
  arms = [a for a in ARMS if a in rr]
  seeds, done = finished_seeds(rr, arms, sets, cells)
  per_seed = seed_scores(rr, done)
  lines = [f"Test halves (eval.split=test, every test query), MRR@{results['k']} x100, "
           + seeds_phrase(done)
           + f"{results['settings']['steps']} steps per run; {results['machine']}.", ""]
  lines += cell_tables(per_seed, arms, sets, cells, lambda n: (
      f"**{SET_NAMES[n]}** ({results['queries'][n]} test queries)"))
  lines += ["Paired differences b − a, MRR@10 x100 (95% bootstrap interval over seeds, "
            "then queries; the claim's direction per cell, no effect size: the paper's "
            "numbers are STS-B Spearman; rule: jaxembed/evals/stats.py):", "",
            "| b − a, set, cell | claim | Δ | 95% interval | verdict |",
            "|---|---|---|---|---|"]
  for b, a, direction, some in comparisons(cells):
    if a in arms and b in arms:
      lines += verdict_rows([(b, a, direction)], sets, some, per_seed)
  steps = results["settings"]["steps"]
  lines += ["", f"Compute per seed: starbucks and 2dmse one run of {steps} steps each "
            "(one encoder pass per step, all six layers); separate six runs of "
            f"{steps} steps, the run at layer k computing k of the six layers "
            "(about 3.5 full runs together)."]
  note = unfinished_note(seeds, done)
  if note:
    lines.append(note)
  return "\n".join(lines + wall_lines(results)) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
