r"""Multi-exit self-distillation (MoSE / ModularStarEncoder's hierarchical
self-distillation) against the same exits without the distillation term, and against
training the last layer alone.

  python -m experiments.exit_distillation --out=runs/exit_distillation --seeds=0,1,2

The arms are configs/exit_distillation.py's: all-MiniLM-L6-v2, full width (384), exits
at layers {2, 4, 6}, the pair loss (InfoNCE, scale 20, in-batch negatives) on WordNet
pairs, bfloat16 matmuls, batch 32, --steps steps (lr 5e-5, 40 warmup steps), on the
same data and steps:
  self_distill  loss.name=self_distillation: InfoNCE at every exit (their mean) plus
                the mean over exits 2 and 4 of KL(next deeper exit || exit) between
                in-batch score distributions, the deeper one detached;
  exits         InfoNCE at every exit (their mean), no KL: loss.matryoshka.mode=pairs
                with (2, 384), (4, 384), (6, 384);
  last_only     InfoNCE at layer 6 only (loss.matryoshka.mode=none).
Each exit is scored on held-out WordNet retrieval, man pages and Python docstrings out
of domain, Lee, SimLex-999 and WordSim-353; the pretrained model once (seed 0's
last_only run evaluates it before training).

Writes <out>/results.json and <out>/table.md (made from results.json alone:
`--table_only`); finished runs are kept, runs in <out>/runs resume.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import (check_settings, percent_mean_sd, run_keyed, run_or_table,
                                    trained_metrics)

_OUT = flags.DEFINE_string("out", "runs/exit_distillation", "results.json, table.md, runs/")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
_ARMS = flags.DEFINE_list("arms", ["self_distill", "exits", "last_only"], "arms")
_STEPS = flags.DEFINE_integer("steps", 80, "training steps of every run")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

EXITS = (2, 4, 6)
ARMS = ("self_distill", "exits", "last_only")     # configs/exit_distillation.py's
COLUMNS = (("wordnet/mrr_at_10", "WordNet MRR@10"), ("manpages/mrr_at_10", "man pages MRR@10"),
           ("docstrings/mrr_at_10", "docstrings MRR@10"), ("lee/spearman", "Lee"),
           ("simlex/spearman", "SimLex"), ("wordsim/spearman", "WordSim"))


def run_config(arm: str, seed: int, *, before: bool = False):
  from configs import exit_distillation
  if arm not in exit_distillation.ARMS:
    raise SystemExit(f"error: --arms: {arm!r} not valid; valid: "
                     f"{list(exit_distillation.ARMS)}")
  c = exit_distillation.get_config(f"arm={arm}")
  c.seed = seed
  c.train.steps = _STEPS.value
  c.eval.before = before
  return c


def _rows(rows) -> dict:
  return {str(r["layer"]): {k: float(v) for k, v in r.items() if k not in ("layer", "dim")}
          for r in rows}


def one_run(key: str, arm: str, seed: int, *, before: bool) -> dict:
  m, seconds = trained_metrics(lambda: run_config(arm, seed, before=before),
                               os.path.join(_OUT.value, "runs", key))
  out = {"arm": arm, "seed": seed, "after": _rows(m["after"]), "seconds": seconds}
  if m.get("before"):
    out["before"] = _rows(m["before"])
  return out


def table(results: dict) -> str:
  runs = results.get("runs", {})
  if not runs:
    return "no runs yet\n"
  arms = [a for a in ARMS if any(r["arm"] == a for r in runs.values())]
  pre = results.get("pretrained") or {}
  lines = []
  for key, label in COLUMNS:
    lines += [f"**{label}** (x100; mean ± sd over seeds, each exit at full width 384)", "",
              "| exit | pretrained | " + " | ".join(arms) + " |",
              "|---|---|" + "---|" * len(arms)]
    for layer in EXITS:
      cells = [f"{100 * pre[str(layer)][key]:.1f}" if str(layer) in pre else "–"]
      for arm in arms:
        cells.append(percent_mean_sd(r["after"][str(layer)][key] for r in runs.values()
                                     if r["arm"] == arm))
      lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("")
  seeds = sorted({r["seed"] for r in runs.values()})
  lines += ["Mean over the six columns, per exit, self_distill minus each other arm, "
            "paired by seed (x100):", "", "| exit | vs exits | vs last_only |", "|---|---|---|"]

  def mean_score(arm, seed, layer):
    r = runs.get(f"{arm}_s{seed}")
    return None if r is None else np.mean([r["after"][str(layer)][k] for k, _ in COLUMNS])
  for layer in EXITS:
    cells = []
    for other in ("exits", "last_only"):
      d = [100 * (mean_score("self_distill", s, layer) - mean_score(other, s, layer))
           for s in seeds if mean_score("self_distill", s, layer) is not None
           and mean_score(other, s, layer) is not None]
      cells.append(", ".join(f"{x:+.2f}" for x in d) + (f" (mean {np.mean(d):+.2f})"
                                                      if d else "") or "–")
    lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  seconds = [r["seconds"] for r in runs.values()]
  lines += ["", f"{len(runs)} runs of {results.get('steps')} steps; "
            f"{sum(seconds) / 60:.1f} min of training and evaluation in all."]
  return "\n".join(lines) + "\n"


def run_all(folder, results) -> None:
  check_settings(folder, results, {"steps": _STEPS.value})
  run_keyed(folder, results, [(f"{a}_s{s}", (a, int(s))) for s in _SEEDS.value
                              for a in _ARMS.value], one_run)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run_all)


if __name__ == "__main__":
  app.run(main)
