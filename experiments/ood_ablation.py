r"""The default recipe's ablation: pair loss only vs pairs + teacher distillation vs
distillation alone vs pairs + teacher with centred exits vs that with single words left
free of the anchor (free_words) vs that with the exits' means estimated again after
training (refreshed) vs that with dropout off and single words free of the KL too
(exact_teacher, the default) vs that with a third of the anchor (loose_anchor) vs
that with batches of 64 pairs and the teacher terms weighted by dataset (split_teacher),
over seeds, on the in-domain and out-of-domain columns.

  python -m experiments.ood_ablation --out=runs/ood_ablation

Runs `experiments.train --config=configs/ood_ablation.py:arm=R --config.seed=S`
for every arm (recipe) R and seed S into <out>/<R>_s<S> (a finished run is kept, an
interrupted one resumes), evaluates "before" (the pretrained model, the same for every
arm) once, then writes <out>/results.json (every cell's metrics per run) and
<out>/table.md (mean +- std over seeds, made from results.json alone:
`--table_only` remakes it without training). Runs recorded in an existing
<out>/results.json are kept and not redone, so seeds can be added later, e.g. after
copying experiments/results/ood_ablation/results.json into <out>.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

CONFIG = "configs/ood_ablation.py"
RECIPES = ("pairs", "distill", "distill_only", "distill_centred", "free_words", "refreshed",
           "exact_teacher", "loose_anchor", "split_teacher")
CELLS = ((1, 32), (1, 64), (2, 32), (2, 64), (3, 128), (4, 256), (6, 32), (6, 384))
COLUMNS = (("manpages/mrr_at_10", "man pages MRR@10"), ("docstrings/mrr_at_10", "docstrings MRR@10"),
           ("wordnet/mrr_at_10", "WordNet MRR@10"), ("lee/spearman", "Lee"),
           ("simlex/spearman", "SimLex"), ("wordsim/spearman", "WordSim"))

_OUT = flags.DEFINE_string("out", "runs/ood_ablation", "where the runs and tables go")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
_RECIPES = flags.DEFINE_list("recipes", list(RECIPES), f"recipes among {RECIPES}")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake the tables from results.json")
_EXTRA = flags.DEFINE_multi_string("override", [], "extra --config.X=V for every run")


def _metrics(workdir: str):
  path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_all(out: str, recipes, seeds, extra) -> dict:
  os.makedirs(out, exist_ok=True)
  results = {"before": None, "runs": {}, "wall_s": {}}
  previous = os.path.join(out, "results.json")
  if os.path.exists(previous):
    # Earlier invocations' results are kept, also of runs whose folders are gone (a
    # results.json copied from the repository): those runs are not redone.
    with open(previous) as f:
      old = json.load(f)
    results.update({k: old.get(k) or results[k] for k in results})
  for recipe in recipes:
    for seed in seeds:
      name = f"{recipe}_s{seed}"
      workdir = os.path.join(out, name)
      done = _metrics(workdir)
      if done is None and name in results["runs"] and not os.path.exists(workdir):
        print(f"{name}: kept from {previous}", flush=True)
      elif done is None:
        first = results["before"] is None and not any(
            (_metrics(os.path.join(out, n)) or {}).get("before") for n in os.listdir(out)
            if os.path.isdir(os.path.join(out, n)))
        args = [sys.executable, "-m", "experiments.train",
                f"--config={CONFIG}:arm={recipe}", f"--workdir={workdir}",
                f"--config.seed={seed}", f"--config.eval.before={first}", *extra]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(args[1:])}", flush=True)
        t0 = time.time()
        subprocess.run(args, check=True)
        results["wall_s"][name] = time.time() - t0
  # Every finished run in `out`, also those of earlier invocations with other
  # --recipes / --seeds, and "before" from whichever run evaluated it.
  for name in sorted(os.listdir(out)):
    done = _metrics(os.path.join(out, name))
    if done is None:
      continue
    results["runs"][name] = done["after"]
    if done.get("before"):
      results["before"] = done["before"]
  return results


def _cell(rows, layer, dim, key):
  for r in rows:
    if r["layer"] == layer and r["dim"] == dim:
      return r.get(key)
  return None


def table(results: dict, recipes, seeds) -> str:
  """Markdown: one table per column, rows = cells, columns = before and each recipe
  (mean +- sample std over the seeds run, x100; a lone seed's value alone)."""
  lines = []
  before = results.get("before")
  for key, title in COLUMNS:
    if before is not None and _cell(before, 6, 384, key) is None:
      continue
    over = (f"seed {seeds[0]}" if len(seeds) == 1
            else f"mean ± std over seeds {', '.join(seeds)}")
    lines += [f"**{title}** (x100; {over})", "",
              "| (layer, dim) | pretrained | " + " | ".join(recipes) + " |",
              "|---" * (len(recipes) + 2) + "|"]
    for layer, dim in CELLS:
      cols = [f"({layer}, {dim})",
              "-" if before is None else f"{100 * _cell(before, layer, dim, key):.1f}"]
      for recipe in recipes:
        vals = [_cell(results["runs"][f"{recipe}_s{s}"], layer, dim, key)
                for s in seeds if f"{recipe}_s{s}" in results["runs"]]
        vals = 100 * np.array([v for v in vals if v is not None])
        cols.append("-" if not len(vals) else f"{vals.mean():.1f}" if len(vals) == 1
                    else f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}")
      lines.append("| " + " | ".join(cols) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  out, recipes, seeds = _OUT.value, _RECIPES.value, _SEEDS.value
  bad = sorted(set(recipes) - set(RECIPES))
  if bad:
    raise app.UsageError(f"--recipes: {bad} unknown; valid: {list(RECIPES)}")
  path = os.path.join(out, "results.json")
  if _TABLE_ONLY.value:
    with open(path) as f:
      results = json.load(f)
  else:
    results = run_all(out, recipes, seeds, _EXTRA.value)
    with open(path, "w") as f:
      json.dump(results, f, indent=1)
  text = table(results, recipes, seeds)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
