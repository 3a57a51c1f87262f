r"""Model merging against balanced and resampled joint training, by the evidence
protocol (test halves, fresh seeds, paired bootstrap intervals over seeds and queries,
verdicts by the rule of jaxembed/evals/stats.py). It redoes experiments/merge_study.py,
whose joint model trained on the natural, imbalanced mixture.

The claim (Li et al. 2024, "Improving General Text Embedding Model: Tackling Task
Conflict and Data Imbalance through Model Merging", abstract): merging independently
trained task models beats joint multi-task training, and Self Positioning (the task
vectors' coefficients searched by gradient descent on probe data) beats resampling,
by 0.7 points on MTEB. Stated before the runs, each as "b above a" with no effect size
(the paper's +0.7 is an MTEB average, not a number on these sets):
  self_positioning > resampled    self_positioning > balanced
  task_arithmetic > resampled     task_arithmetic > balanced

  python -m experiments.merge_balanced --out=runs/merge_balanced --seeds=3
  (then --seeds=3,4 and --seeds=3,4,5: each command trains and merges one new seed)

Per seed, four runs of configs/model_merging.py (all-MiniLM-L6-v2, the pair loss at
(6, 384), batch 32; every batch from one kind of WordNet pair): specialist A on
(definition, example) pairs and B on (lemma, definition) pairs, --steps each; the joint
arms on both kinds for 2 x --steps (the specialists' examples together), drawn 1:1
('balanced') or by temperature resampling, size^(1/2) ('resampled'). A and B are then
merged from the pretrained weights θ0 with task vectors τ = θ − θ0
(jaxembed/train/merge.py): the uniform soup (α = ½, ½), task arithmetic (one λ for
both, the lowest probe loss among 0.25 … 1.25) and Self Positioning (α_A, α_B from ½ by
--sp_steps Adam steps, lr 0.05). The probe is --probe_batches fresh batches of each
specialist's training data (seed + 1000), not an evaluation set: nothing is chosen on
the sets reported. Every model, the pretrained one once, is scored on the test halves
(eval.split=test, every test query) of WordNet, man pages and docstrings at the cell
(6, 384), MRR@10 per query.

Writes <out>/results.json (per-query reciprocal ranks, the merges' coefficients and
probe losses, wall times, the machine) and <out>/table.md, made from results.json alone
(`--table_only`). Finished runs, merges and scores are kept.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (SET_NAMES, evaluate_cells, machine, test_tasks,
                                  verdict_section, wall_lines)

CONFIG = "configs/model_merging.py"
SPECIALISTS = ("A", "B")
JOINT = ("balanced", "resampled", "natural")
MERGES = ("uniform", "task_arithmetic", "self_positioning")
COMPARISONS = (("self_positioning", "resampled", +1), ("self_positioning", "balanced", +1),
               ("task_arithmetic", "resampled", +1), ("task_arithmetic", "balanced", +1))
LABELS = {"pretrained": "pretrained (θ0)", "A": "A: (definition, example)",
          "B": "B: (lemma, definition)", "balanced": "joint, balanced 1:1",
          "resampled": "joint, resampled size^½", "natural": "joint, natural (size)",
          "uniform": "uniform soup", "task_arithmetic": "task arithmetic",
          "self_positioning": "Self Positioning"}

_OUT = flags.DEFINE_string("out", "runs/merge_balanced", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["3", "4", "5"], "training seeds")
_JOINT = flags.DEFINE_list("joint", ["balanced", "resampled"],
                           f"joint arms to train (of {', '.join(JOINT)})")
_STEPS = flags.DEFINE_integer("steps", 100, "each specialist's steps (joint: twice)")
_PROBE = flags.DEFINE_integer("probe_batches", 8, "probe batches from each specialist")
_SP_STEPS = flags.DEFINE_integer("sp_steps", 30, "Self Positioning's Adam steps")
_VARIANT = flags.DEFINE_enum("variant", "", ["", "accelerator", "smoke"],
                             "config variant: '' (2 CPU cores), accelerator, smoke")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "where datasets are built (default: the "
                                 "config's data.tfds_dir)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def config_arg(arm: str) -> str:
  return ",".join(filter(None, [f"arm={arm}", f"steps={_STEPS.value}", _VARIANT.value]))


def make_config(arm: str, seed: int):
  from jaxembed.configs import model_merging
  c = model_merging.get_config(config_arg(arm))
  c.seed = seed
  c.eval.before = False
  if _TFDS_DIR.value:
    c.data.tfds_dir = _TFDS_DIR.value
  # The run's own end-of-run evaluation is made small: the study scores the test halves.
  c.eval.wordnet_queries, c.eval.ood, c.eval.ood_queries = 0, ("docstrings",), 32
  for key in ("lee", "simlex", "wordsim", "polarity", "newsgroup"):
    c.eval[key] = False
  return c


def the_cell() -> tuple[int, int]:
  c = make_config("A", 0)
  return c.eval.layers[-1], c.eval.dims[-1]


def train_arm(out: str, arm: str, seed: int) -> tuple[str, float]:
  """(workdir, seconds of training; 0 when it had finished)."""
  from jaxembed import train
  from jaxembed.workdir import Workdir
  workdir = os.path.join(out, "runs", f"{arm}_s{seed}")
  if os.path.exists(os.path.join(workdir, Workdir.METRICS)):
    return workdir, 0.0
  start = time.time()
  train.train_and_evaluate(make_config(arm, seed), workdir)
  return workdir, round(time.time() - start, 1)


def merge_folder(out: str, workdirs, method: str, seed: int) -> tuple[str, dict, float]:
  """The model folder of A and B merged by `method` ('pretrained': θ0 itself), its
  record (coefficients, probe losses) and the seconds the merge took."""
  from jaxembed.train import merge as mg
  folder = os.path.join(out, "merged", f"{method}_s{seed}" if seed >= 0 else method)
  start = time.time()
  if method == "pretrained":
    run = mg.workdir_run(workdirs[0])
    params, record = mg.load_params(run, "pretrained"), {"method": method,
                                                          "workdirs": []}
  else:
    _, params, record = mg.merge_runs(workdirs, method, probes_per_run=_PROBE.value,
                                      steps=_SP_STEPS.value, learning_rate=0.05,
                                      log=logging.info)
  mg.write_merged(workdirs[0], params, folder, record)
  record = {k: v for k, v in record.items() if k not in ("history", "workdirs")}
  return folder, record, round(time.time() - start, 1)


def run(folder, results: dict) -> None:
  seeds = [int(s) for s in _SEEDS.value]
  joint = [a for a in JOINT if a in _JOINT.value]
  unknown = sorted(set(_JOINT.value) - set(JOINT))
  if unknown:
    raise SystemExit(f"error: --joint: unknown {unknown}; valid: {list(JOINT)}")
  settings = {"config": CONFIG, "steps": _STEPS.value, "variant": _VARIANT.value,
              "probe_batches": _PROBE.value, "sp_steps": _SP_STEPS.value}
  if results.get("rr") and results.get("settings") != settings:
    raise SystemExit(f"error: {folder.path} holds runs made with "
                     f"{results.get('settings')}, not {settings}: use another --out")
  # (a smoke run, for the tests: 100 queries a set)
  tasks = test_tasks(_TFDS_DIR.value or None, 100 if _VARIANT.value == "smoke" else None)
  cell = the_cell()
  results.update({"k": 10, "split": "test", "settings": settings, "machine": machine(),
                  "sets": list(tasks), "cell": list(cell),
                  "batch_size": make_config("A", 0).train.batch_size,
                  "queries": {n: len(t.queries) for n, t in tasks.items()}})
  results["seeds"] = sorted(set(results.get("seeds", [])) | set(seeds))
  rr = results.setdefault("rr", {})
  train_wall = results.setdefault("train_wall_s", {})
  merges = results.setdefault("merges", {})
  merge_wall = results.setdefault("merge_wall_s", {})

  def score(model: str, key: str, path: str) -> None:
    if key not in rr.get(model, {}):
      start = time.time()
      rr.setdefault(model, {})[key] = evaluate_cells(path, tasks, cells=(cell,))
      results.setdefault("eval_wall_s", {})[f"{model}_{key}"] = round(time.time() - start, 1)
      folder.save(results)

  for seed in seeds:
    paths = {}
    for arm in (*SPECIALISTS, *joint):
      paths[arm], took = train_arm(folder.out, arm, seed)
      if took:
        train_wall[f"{arm}_s{seed}"] = took
        folder.save(results)
    if "pretrained" not in rr:
      path, _, _ = merge_folder(folder.out, [paths["A"], paths["B"]], "pretrained", -1)
      score("pretrained", "-", path)
    for arm in (*SPECIALISTS, *joint):
      score(arm, str(seed), paths[arm])
    for method in MERGES:
      if str(seed) in rr.get(method, {}):
        continue
      path, record, took = merge_folder(folder.out, [paths["A"], paths["B"]], method, seed)
      merges.setdefault(method, {})[str(seed)] = record
      merge_wall[f"{method}_s{seed}"] = took
      score(method, str(seed), path)
  folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  sets = results["sets"]
  cell = "_".join(str(x) for x in results["cell"])
  rr = results["rr"]
  s = results["settings"]
  models = ["pretrained", *[m for m in (*SPECIALISTS, *JOINT, *MERGES) if m in rr]]

  def per_seed(model, n, c=cell):
    keys = ["-"] if model == "pretrained" else seeds
    return np.array([rr[model][k][n][c] for k in keys])

  lines = [f"Test halves (eval.split=test, every test query), MRR@{results['k']} x100 at "
           f"({cell.replace('_', ', ')}), mean ± sample sd over seeds {', '.join(seeds)} "
           f"(pretrained: one model); {results['machine']}.", "",
           "| model | " + " | ".join(f"{SET_NAMES[n]} ({results['queries'][n]})"
                                     for n in sets) + " | mean of sets |",
           "|---|" + "---|" * (len(sets) + 1)]
  for model in models:
    per_set = [100 * per_seed(model, n).mean(axis=1) for n in sets]   # [sets][seeds]
    cells = [f"{v.mean():.1f}" + (f" ± {stats.sample_sd(v):.1f}" if len(v) > 1 else "")
             for v in per_set]
    means = np.mean(per_set, axis=0)
    cells.append(f"{means.mean():.1f}" + (f" ± {stats.sample_sd(means):.1f}"
                                         if len(means) > 1 else ""))
    lines.append(f"| {LABELS[model]} | " + " | ".join(cells) + " |")
  comparisons = [c for c in COMPARISONS if c[0] in rr and c[1] in rr]
  lines += verdict_section(comparisons, sets, [cell], per_seed)
  lines += ["", "Merge coefficients (α_A, α_B) found on the probe, and the probe loss "
            "(uniform → merged):", "", "| seed | task arithmetic | Self Positioning |",
            "|---|---|---|"]
  merges = results.get("merges", {})
  for seed in seeds:
    row = [seed]
    for method in ("task_arithmetic", "self_positioning"):
      r = merges.get(method, {}).get(seed)
      row.append("–" if r is None else
                 ", ".join(f"{a:.2f}" for a in r["alphas"])
                 + f"; {r['probe_loss']['uniform']:.3f} → {r['probe_loss']['merged']:.3f}")
    lines.append("| " + " | ".join(row) + " |")
  steps, batch = s["steps"], results["batch_size"]
  if not s["variant"]:           # (the variants set their own steps)
    probe = 2 * s["probe_batches"]
    lines += ["", "Compute per seed (pairs seen in training; the merges also read "
              f"{probe} probe batches: task arithmetic scores them at 5 λ, Self "
              f"Positioning takes {s['sp_steps']} steps on them):", "",
              "| model | steps x batch | pairs seen |", "|---|---|---|",
              f"| A, B (each) | {steps} x {batch} | {steps * batch:,} |",
              f"| each joint arm | {2 * steps} x {batch} | {2 * steps * batch:,} |",
              f"| each merge of A and B | (A's + B's) | {2 * steps * batch:,} |"]
  lines += wall_lines(results)
  merge_wall = results.get("merge_wall_s", {})
  if merge_wall:
    lines.append("Merge wall time (s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(merge_wall.items())))
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
