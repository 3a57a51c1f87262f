r"""Matryoshka for multi-vector retrieval, by the evidence protocol: token vectors
trained at every (layer, token dim) cell from one pass, against the same multi-vector
model trained at its full cell alone and cut down afterwards.

What it is meant to buy: a ColBERT index stores one vector per document token, so its
size is tokens x token dim, and its encoder cost grows with depth. A model trained at
every (layer, dim) cell serves a smaller index (dim 32 or 64) or a cheaper encoder (layer
2 or 4) with no second model. No peer library trains this (PyLate, ColBERT and
BGE-M3 train one width at the last layer). Arms, each all-MiniLM-L6-v2 fine-tuned 400
steps of 32 WordNet + FOLDOC pairs, the same data order per seed:
  multi   configs/colbert_minilm.py: 128-wide token vectors of layer 6, InfoNCE over
          MaxSim at that cell alone
  grid    configs/colbert_minilm.py:matryoshka: the same loss summed over the cells of
          layers {2, 4, 6} x dims {32, 64, 128}, one encoder pass per step
Each model is scored at every cell (a cell's vectors: its layer's projection, the first
dims, renormalised; exhaustive MaxSim), on the test halves of the man pages,
docstrings (out of domain) and WordNet (in domain), MRR@10 per query.

The claims, stated before the runs (direction only: MRL, Kusupati et al. 2022, reports
single-vector classification, not MaxSim retrieval):
  grid > multi   at every cell but (6, 128): nested training keeps the cut-down cells
                 usable (at layers 2 and 4 the multi arm's projections are never trained:
                 what a full-cell model offers there)
  grid < multi   at (6, 128): training the other cells costs the full cell something
                 (MRL reports no such cost for single vectors)

  python -m experiments.multivector_matryoshka --out=runs/multivector_matryoshka --seeds=1
  (then --seeds=2 and --seeds=3 into the same folder; a seed is two training runs,
  5-8 minutes each on 2 CPU cores in experiments/multivector_study.py, and nine
  cells scored per model)

Writes <out>/results.json and <out>/table.md (from results.json alone: `--table_only`);
finished runs and scores are kept, so an interrupted command resumes.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (SET_NAMES, cell_tables, finished_seeds, machine,
                                  maxsim_matrix, reciprocal_ranks, seed_scores, seeds_phrase,
                                  table_text, test_tasks, train, verdict_rows)

CONFIG = "configs/colbert_minilm.py"
ARMS = {"multi": "", "grid": "matryoshka"}

_OUT = flags.DEFINE_string("out", "runs/multivector_matryoshka", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "training seeds (fresh: seed 0 "
                           "made the config's README numbers)")
_VARIANT = flags.DEFINE_enum("variant", "", ["", "accelerator", "smoke"],
                             "config variant: '' (2 CPU cores), accelerator, smoke")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "where datasets are built (default: the "
                                "config's data.tfds_dir)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def config_arg(arm: str, variant: str) -> str:
  """configs/colbert_minilm.py's argument for one arm."""
  return ",".join(filter(None, [variant, ARMS[arm]]))


def grid_cells(variant: str) -> list[tuple[int, int]]:
  """The (layer, dim) cells every model is scored at: the matryoshka variant's grid."""
  from jaxembed.configs import colbert_minilm
  c = colbert_minilm.get_config(config_arg("grid", variant))
  return [(int(l), int(d)) for l in c.loss.matryoshka.layers for d in c.loss.matryoshka.dims]


def cut(vectors, dim: int) -> list[np.ndarray]:
  """Each text's token vectors [t, D] cut to their first `dim` entries, rows
  renormalised (a cell's vectors, as the grid loss scores them)."""
  out = []
  for v in vectors:
    v = np.asarray(v[:, :dim], np.float32)
    out.append(v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12))
  return out


def evaluate_cells(path: str, tasks, cells) -> dict:
  """{set: {'layer_dim': [reciprocal rank per query]}}: each layer encoded once at full
  width, each cell cut from it and scored by exhaustive MaxSim."""
  import jaxembed
  model = jaxembed.load(path)
  out = {}
  for name, task in tasks.items():
    out[name] = {}
    for layer in sorted({l for l, _ in cells}):
      q = model.encode_multivector(task.queries, is_query=True, layer=layer)
      d = model.encode_multivector(task.corpus, is_query=False, layer=layer)
      for dim in sorted(d_ for l, d_ in cells if l == layer):
        rr = reciprocal_ranks(maxsim_matrix(cut(q, dim), cut(d, dim)), task.relevance)
        out[name][f"{layer}_{dim}"] = [round(float(x), 6) for x in rr]
  return out


def run(folder, results: dict) -> None:
  settings = {"config": CONFIG, "variant": _VARIANT.value}
  if results.get("rr") and results.get("settings") != settings:
    raise SystemExit(f"error: {folder.path} holds runs made with "
                     f"{results.get('settings')}, not {settings}: use another --out")
  cells = grid_cells(_VARIANT.value)
  # (a smoke run, for trying the script: 100 queries a set)
  tasks = test_tasks(_TFDS_DIR.value or None, 100 if _VARIANT.value == "smoke" else None)
  results.update({"k": 10, "split": "test", "settings": settings, "machine": machine(),
                  "sets": list(tasks), "cells": [list(c) for c in cells],
                  "queries": {n: len(t.queries) for n, t in tasks.items()},
                  "corpus": {n: len(t.corpus) for n, t in tasks.items()}})
  rr = results.setdefault("rr", {})
  wall = results.setdefault("train_wall_s", {})
  extra = [f"--config.data.tfds_dir={_TFDS_DIR.value}"] if _TFDS_DIR.value else []
  for seed in [int(s) for s in _SEEDS.value]:
    for arm in ARMS:
      arg = config_arg(arm, _VARIANT.value)
      took = train(folder.out, arm, seed, f"{CONFIG}:{arg}" if arg else CONFIG, extra)
      if took:
        wall[f"{arm}_s{seed}"] = round(took, 1)
        folder.save(results)
      got = rr.setdefault(arm, {}).setdefault(str(seed), {})
      if not all(f"{l}_{d}" in got.get(n, {}) for n in tasks for l, d in cells):
        start = time.time()
        scored = evaluate_cells(os.path.join(folder.out, f"{arm}_s{seed}"), tasks, cells)
        for n, per_cell in scored.items():
          got.setdefault(n, {}).update(per_cell)
        results.setdefault("eval_wall_s", {})[f"{arm}_s{seed}"] = round(
            time.time() - start, 1)
        folder.save(results)
  folder.save(results)


def comparisons(cells: list[str]) -> list:
  """(b, a, direction, cells) of the claims above: the full cell is the last."""
  return [("grid", "multi", +1, cells[:-1]), ("grid", "multi", -1, cells[-1:])]


def table(results: dict) -> str:
  rr = results["rr"]
  sets = results["sets"]
  cells = [f"{l}_{d}" for l, d in sorted(results["cells"])]
  arms = [a for a in ARMS if a in rr]
  seeds, done = finished_seeds(rr, arms, sets, cells)
  per_seed = seed_scores(rr, done)
  lines = [f"Test halves (eval.split=test, every test query), MRR@{results['k']} x100, "
           + seeds_phrase(done)
           + f"{results['machine']}. A cell's index holds dim floats per document "
           "token.", ""]
  lines += cell_tables(per_seed, arms, sets, cells, lambda n: (
      f"**{SET_NAMES[n]}** ({results['queries'][n]} test queries, "
      f"{results['corpus'][n]} documents)"))
  lines += ["Paired differences grid − multi, MRR@10 x100 (95% bootstrap interval over "
            "seeds, then queries; the claim's direction per cell, no effect size; rule: "
            "jaxembed/evals/stats.py):", "",
            "| b − a, set, cell | claim | Δ | 95% interval | verdict |",
            "|---|---|---|---|---|"]
  if "grid" in arms and "multi" in arms:
    for b, a, direction, some in comparisons(cells):
      lines += verdict_rows([(b, a, direction)], sets, some, per_seed)
  return table_text(lines, seeds, done, results)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
