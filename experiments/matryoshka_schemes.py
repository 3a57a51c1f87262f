r"""2D Matryoshka schemes at equal compute (the Matryoshka reproductions, §1's text side,
§2 and §4): the full (layer x dim) grid, Starbucks' fixed diagonal pairs with their KL
term (and the grid with that term), 2DMSE's sampled layer and dim with its alignment
term, one separately trained model per diagonal cell, and 1D MRL at the last layer
against plain InfoNCE truncated, all from all-MiniLM-L6-v2 on the same data and steps.

  python -m experiments.matryoshka_schemes --out=runs/schemes --arms=starbucks,2dmse,separate
  python -m experiments.matryoshka_schemes --out=runs/schemes --arms=grid,grid_kl
  python -m experiments.matryoshka_schemes --out=runs/schemes --arms=mrl,plain

(one folder; each command adds its arms' runs and fits 25 minutes on 2 CPU cores; the
tables compare whatever arms the folder holds).

The arms are configs/matryoshka_schemes.py's (80 steps of 32 WordNet pairs, InfoNCE,
bfloat16 matmuls); every model is scored at the diagonal cells (1,16) (2,32) (3,64)
(4,128) (5,256) (6,384) on held-out WordNet retrieval, man pages and Python docstrings
out of domain, Lee, SimLex-999 and WordSim-353; the separate arm trains six models per
seed, each scored at its own cell; every other arm is also scored at the last layer's
cells (6, d) for every d. The pretrained model is scored once (the first run evaluates
it before training).

Writes <out>/results.json and <out>/table.md (made from results.json alone:
`--table_only`); finished runs are kept, runs in <out>/runs resume.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import (check_settings, percent_mean_sd, run_keyed, run_or_table,
                                    trained_metrics)

_OUT = flags.DEFINE_string("out", "runs/matryoshka_schemes", "results.json, table.md, runs/")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
_ARMS = flags.DEFINE_list("arms", ["grid", "starbucks", "2dmse", "separate"], "arms")
_STEPS = flags.DEFINE_integer("steps", 80, "training steps of every run")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))   # the config's
LAST = tuple((PAIRS[-1][0], d) for _, d in PAIRS)   # the last layer at every dim (text MRL)
ARMS = ("grid", "grid_kl", "starbucks", "2dmse", "separate", "mrl", "plain")
DIAGONAL_ARMS = ("grid", "grid_kl", "starbucks", "2dmse", "separate")
LAST_ARMS = ("mrl", "plain", "grid", "grid_kl", "starbucks", "2dmse")
COLUMNS = (("wordnet/mrr_at_10", "WordNet MRR@10"), ("manpages/mrr_at_10", "man pages MRR@10"),
           ("docstrings/mrr_at_10", "docstrings MRR@10"), ("lee/spearman", "Lee"),
           ("simlex/spearman", "SimLex"), ("wordsim/spearman", "WordSim"))


def run_config(arm: str, seed: int, cell=None, *, before: bool = False):
  from configs import matryoshka_schemes
  if arm not in matryoshka_schemes.ARMS:
    raise SystemExit(f"error: --arms: {arm!r} not valid; valid: "
                     f"{list(matryoshka_schemes.ARMS)}")
  arg = f"arm={arm}" + (f",cell={cell[0]}:{cell[1]}" if cell else "")
  c = matryoshka_schemes.get_config(arg)
  c.seed = seed
  c.train.steps = _STEPS.value
  c.eval.before = before
  return c


def _cells(rows) -> dict:
  """{'<layer>x<dim>': scores} of the diagonal and the last layer's cells among the rows."""
  keep = set(PAIRS) | set(LAST)
  return {f"{r['layer']}x{r['dim']}": {k: float(v) for k, v in r.items()
                                      if k not in ("layer", "dim")}
          for r in rows if (r["layer"], r["dim"]) in keep}


def one_run(key: str, arm: str, seed: int, cell, *, before: bool) -> dict:
  before = before and arm != "separate"     # a separate model scores one cell only
  m, seconds = trained_metrics(lambda: run_config(arm, seed, cell, before=before),
                               os.path.join(_OUT.value, "runs", key))
  out = {"arm": arm, "seed": seed, "after": _cells(m["after"]), "seconds": seconds}
  if m.get("before"):
    out["before"] = _cells(m["before"])
  return out


def scores(runs: dict, arm: str, cell: str, key: str) -> dict:
  """{seed: score} of one arm at one cell (the separate arm: that cell's own model)."""
  return {r["seed"]: r["after"][cell][key] for r in runs.values()
          if r["arm"] == arm and cell in r["after"]}


def _mean_scores(runs: dict, arm: str, cell: str) -> dict:
  """{seed: mean of the six columns} of one arm at one cell."""
  per = [scores(runs, arm, cell, k) for k, _ in COLUMNS]
  seeds = set.intersection(*(set(x) for x in per))
  return {s: float(np.mean([x[s] for x in per])) for s in sorted(seeds)}


def cell_tables(runs: dict, pre: dict, arms, cells) -> list:
  """One table per column (and their mean): a row per cell, a column per arm."""
  lines = []
  for key, label in COLUMNS + (("mean", "Mean of the six columns"),):
    lines += [f"**{label}** (x100; mean ± sd over seeds)", "",
              "| (layer, dim) | pretrained | " + " | ".join(arms) + " |",
              "|---|---|" + "---|" * len(arms)]
    for cell in cells:
      if key == "mean":
        row = [percent_mean_sd([np.mean([pre[cell][k] for k, _ in COLUMNS])] if cell in pre else [])]
        row += [percent_mean_sd(_mean_scores(runs, arm, cell).values()) for arm in arms]
      else:
        row = [percent_mean_sd([pre[cell][key]] if cell in pre else [])]
        row += [percent_mean_sd(scores(runs, arm, cell, key).values()) for arm in arms]
      lines.append(f"| ({cell.replace('x', ', ')}) | " + " | ".join(row) + " |")
    lines.append("")
  return lines


def table(results: dict) -> str:
  runs = results.get("runs", {})
  if not runs:
    return "no runs yet\n"
  present = {r["arm"] for r in runs.values()}
  pre = results.get("pretrained") or {}
  lines = []
  diagonal = [a for a in DIAGONAL_ARMS if a in present]
  if diagonal:
    lines += ["### The diagonal cells", ""]
    lines += cell_tables(runs, pre, diagonal, [f"{l}x{d}" for l, d in PAIRS])
  last = [a for a in LAST_ARMS if a in present]
  if present & {"mrl", "plain"}:
    lines += ["### The last layer at every dim (text MRL)", ""]
    lines += cell_tables(runs, pre, last, [f"{l}x{d}" for l, d in LAST])
    if {"mrl", "plain"} <= present:
      lines += ["MRL minus plain InfoNCE truncated, mean of the six columns, paired by "
                "seed (x100):", "", "| (layer, dim) | per seed | mean |", "|---|---|---|"]
      for l, d in LAST:
        a, b = _mean_scores(runs, "mrl", f"{l}x{d}"), _mean_scores(runs, "plain", f"{l}x{d}")
        diff = [100 * (a[s] - b[s]) for s in sorted(set(a) & set(b))]
        per_seed, mean = (", ".join(f"{x:+.2f}" for x in diff), f"{np.mean(diff):+.2f}") \
            if diff else ("–", "–")
        lines.append(f"| ({l}, {d}) | {per_seed} | {mean} |")
      lines.append("")
  for arm in ARMS:
    secs = [r["seconds"] for r in runs.values() if r["arm"] == arm]
    if secs:
      lines.append(f"- {arm}: {len(secs)} runs, {sum(secs) / 60:.1f} min")
  seconds = [r["seconds"] for r in runs.values()]
  lines += ["", f"{len(runs)} runs of {results.get('steps')} steps; "
            f"{sum(seconds) / 60:.1f} min of training and evaluation in all."]
  return "\n".join(lines) + "\n"


def run_all(folder, results) -> None:
  check_settings(folder, results, {"steps": _STEPS.value})
  grid = []
  for s in _SEEDS.value:
    for arm in _ARMS.value:
      if arm == "separate":
        grid += [(f"separate_{l}x{d}_s{s}", (arm, int(s), (l, d))) for l, d in PAIRS]
      else:
        grid.append((f"{arm}_s{s}", (arm, int(s), None)))
  run_keyed(folder, results, grid, one_run)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run_all)


if __name__ == "__main__":
  app.run(main)
