r"""Model merging vs joint training: WordNet specialists merged three ways, against one
model trained on their mixture, on every evaluation set.

  python -m experiments.merge_study --out=runs/merge_study --seeds=0,1,2

Per seed, three runs of all-MiniLM-L6-v2 with the pair loss (InfoNCE, scale 20,
in-batch negatives, full size (6, 384)): specialist A on (definition, example) pairs,
specialist B on (lemma, definition) pairs, --steps each, and the joint run on both
kinds mixed in their natural proportion for 2 x --steps (the specialists' compute
together). Then the specialists are merged (`jaxembed/train/merge.py`): the uniform
soup, task arithmetic (λ from the probe loss) and Self Positioning (α by Adam on a
probe of --probe_batches batches from each specialist's data, unseen in training).
Every model — the pretrained one once — is scored on one evaluation set-up (held-out
WordNet retrieval, man pages and docstrings out of domain, Lee, SimLex-999,
WordSim-353, classification and clustering), at (6, 384).

Writes <out>/results.json (every model's scores, the coefficients, wall times) and
<out>/table.md, made from results.json alone (`--table_only`). Finished seeds in
results.json are kept; training runs in <out>/runs resume.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from absl import app, flags

from experiments.results_io import percent_mean_sd, run_or_table

_OUT = flags.DEFINE_string("out", "runs/merge_study", "results.json, table.md, runs/")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
_STEPS = flags.DEFINE_integer("steps", 60, "training steps of each specialist")
_PROBE = flags.DEFINE_integer("probe_batches", 8, "probe batches from each specialist")
_SP_STEPS = flags.DEFINE_integer("sp_steps", 30, "Self Positioning's Adam steps")
_EVAL_QUERIES = flags.DEFINE_integer("eval_queries", 500,
                                     "queries of each retrieval set (WordNet, man "
                                     "pages, docstrings)")
_SPECIALIST_SEEDS = flags.DEFINE_list(
    "specialist_seeds", None, "seeds whose specialists A and B are scored too (context "
    "for the table; the claim compares the merges with joint training); default: all")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

# The base: the pair loss alone, 1D Matryoshka at the last layer.
CONFIG_ARG = "pair_loss,variant=mrl"
KINDS = {"A": ("gloss_example",), "B": ("lemma_gloss",),
         "joint": ("gloss_example", "lemma_gloss")}
MODELS = ("A", "B", "joint", "uniform", "task_arithmetic", "self_positioning")
COLUMNS = (("wordnet/mrr_at_10", "WordNet MRR@10"), ("manpages/mrr_at_10", "man pages MRR@10"),
           ("docstrings/mrr_at_10", "docstrings MRR@10"), ("lee/spearman", "Lee"),
           ("simlex/spearman", "SimLex"), ("wordsim/spearman", "WordSim"),
           ("polarity/knn_acc", "polarity kNN"),
           ("newsgroup_clusters/v_measure", "20NG V-measure"))


def run_config(name: str, seed: int, *, for_eval: bool = False):
  from configs import common
  c = common.pair_loss_config()
  c.loss.matryoshka.mode = "mrl"
  c.seed = seed
  c.data.pair_kinds = KINDS[name]
  c.loss.matryoshka.dims = (384,)            # the pair loss at the full size only
  c.train.steps = _STEPS.value * (2 if name == "joint" else 1)
  c.eval.before = False
  c.eval.layers, c.eval.dims = (6,), (384,)
  if for_eval:
    c.eval.wordnet_queries = _EVAL_QUERIES.value
    c.eval.ood_queries = _EVAL_QUERIES.value
  else:                                      # scored below, on one shared set-up
    for key in ("wordnet_queries",):
      c.eval[key] = 0
    for key in ("lee", "wordsim", "polarity", "newsgroup"):
      c.eval[key] = False
    c.eval.ood = ()
  return c


def _row(rows) -> dict:
  (row,) = rows
  return {k: float(v) for k, v in row.items() if k not in ("layer", "dim")}


def one_seed(seed: int, eval_run) -> dict:
  from jaxembed import train
  from jaxembed.train import merge as mg
  from jaxembed.workdir import Workdir
  out, wall = {}, {}
  workdirs = {}
  for name in ("A", "B", "joint"):
    workdir = os.path.join(_OUT.value, "runs", f"{name}_s{seed}")
    start = time.time()
    if not os.path.exists(os.path.join(workdir, Workdir.METRICS)):
      train.train_and_evaluate(run_config(name, seed), workdir)
    wall[f"train_{name}"] = round(time.time() - start, 1)
    workdirs[name] = workdir
  scored = ("A", "B", "joint")
  if _SPECIALIST_SEEDS.value is not None and str(seed) not in _SPECIALIST_SEEDS.value:
    scored = ("joint",)
  for name in scored:
    start = time.time()
    out[name] = _row(train.evaluate(eval_run, mg.load_params(eval_run, workdirs[name]),
                                    name))
    wall[f"eval_{name}"] = round(time.time() - start, 1)
  pair = [workdirs["A"], workdirs["B"]]
  base = mg.load_params(eval_run, "pretrained")
  taus = mg.task_vectors(base, [mg.load_params(eval_run, w) for w in pair])
  start = time.time()
  probe = mg.interleave([mg.probe_batches(mg.workdir_run(w, seed_offset=1000), _PROBE.value)
                         for w in pair])
  lam, scale_losses = mg.choose_scale(eval_run, base, taus, probe)
  wall["task_arithmetic_scale"] = round(time.time() - start, 1)
  start = time.time()
  alphas, history = mg.self_positioning(eval_run, base, taus, probe, steps=_SP_STEPS.value,
                                        learning_rate=0.05, log=logging.info)
  wall["self_positioning_search"] = round(time.time() - start, 1)
  coefficients = {"uniform": [0.5, 0.5], "task_arithmetic": [lam, lam],
                  "self_positioning": [float(a) for a in alphas]}
  probe_loss = dict(zip(coefficients, mg.probe_losses(
      eval_run, base, taus, list(coefficients.values()), probe)))
  for name, alpha in coefficients.items():
    start = time.time()
    out[name] = _row(train.evaluate(eval_run, mg.combine(base, taus, alpha), name))
    wall[f"eval_{name}"] = round(time.time() - start, 1)
  return {"scores": out, "coefficients": coefficients, "probe_loss": probe_loss,
          "task_arithmetic_losses": {str(k): v for k, v in scale_losses.items()},
          "self_positioning_history": history, "wall_s": wall}


def table(results: dict) -> str:
  seeds = results.get("seeds", {})
  if not seeds:
    return "no seeds yet\n"
  pre = results.get("pretrained") or {}
  names = [s for s in sorted(seeds, key=int)]
  present = [(k, label) for k, label in COLUMNS if k in pre or
             any(k in seeds[s]["scores"]["joint"] for s in names)]
  lines = [f"Scores x100 at (6, 384), mean ± sd over seeds {', '.join(names)}; "
           "pretrained: all-MiniLM-L6-v2 before training.", "",
           "| model | " + " | ".join(label for _, label in present) + " | mean |",
           "|---|" + "---|" * (len(present) + 1)]

  if pre:
    vals = [100 * pre[k] for k, _ in present if k in pre]
    lines.append("| pretrained | " + " | ".join(
        f"{100 * pre[k]:.1f}" if k in pre else "–" for k, _ in present)
        + f" | {np.mean(vals):.1f} |")
  for model in MODELS:
    have = [s for s in names if model in seeds[s]["scores"]]
    if not have:
      continue
    per = [[seeds[s]["scores"][model][k] for s in have] for k, _ in present]
    means = [np.mean([seeds[s]["scores"][model][k] for k, _ in present]) for s in have]
    label = model if have == names else f"{model} (seed {', '.join(have)})"
    lines.append(f"| {label} | " + " | ".join(percent_mean_sd(v) for v in per)
                 + f" | {percent_mean_sd(means)} |")
  lines += ["", "Merged minus joint, per seed (mean over the columns, x100):", "",
            "| method | " + " | ".join(f"seed {s}" for s in names) + " | sets ≥ joint |",
            "|---|" + "---|" * (len(names) + 1)]
  for model in ("uniform", "task_arithmetic", "self_positioning"):
    diffs, wins, total = [], 0, 0
    for s in names:
      sc = seeds[s]["scores"]
      d = [sc[model][k] - sc["joint"][k] for k, _ in present]
      diffs.append(100 * np.mean(d))
      wins += sum(x >= 0 for x in d)
      total += len(d)
    lines.append(f"| {model} | " + " | ".join(f"{d:+.2f}" for d in diffs)
                 + f" | {wins}/{total} |")
  lines += ["", "Coefficients (α_A, α_B) and probe loss:", "",
            "| seed | task arithmetic λ | Self Positioning α | probe loss uniform / "
            "task arithmetic / Self Positioning |", "|---|---|---|---|"]
  for s in names:
    r = seeds[s]
    pl = r["probe_loss"]
    lines.append(f"| {s} | {r['coefficients']['task_arithmetic'][0]:g} | "
                 + ", ".join(f"{a:.3f}" for a in r["coefficients"]["self_positioning"])
                 + f" | {pl['uniform']:.4f} / {pl['task_arithmetic']:.4f} / "
                 f"{pl['self_positioning']:.4f} |")
  wall = sum(v for s in names for v in seeds[s]["wall_s"].values())
  lines += ["", f"Settings: {results.get('settings')}; {wall / 60:.1f} min of training, "
            "merging and evaluation for these seeds (plus the pretrained model's "
            f"evaluation, {results.get('pretrained_wall_s', 0):.0f} s)."]
  return "\n".join(lines) + "\n"


def run_all(folder, results) -> None:
  import tempfile
  from jaxembed import train
  from jaxembed.train import merge as mg
  settings = {"config_arg": CONFIG_ARG, "steps": _STEPS.value,
              "probe_batches": _PROBE.value, "sp_steps": _SP_STEPS.value,
              "eval_queries": _EVAL_QUERIES.value}
  if _SPECIALIST_SEEDS.value is not None:
    settings["specialist_seeds"] = list(_SPECIALIST_SEEDS.value)
  if results.get("seeds") and results.get("settings") != settings:
    raise SystemExit(f"error: {folder.path} holds seeds run with "
                     f"{results.get('settings')}, not {settings}: use another --out")
  results["settings"] = settings
  seeds = results.setdefault("seeds", {})
  eval_run = train.setup(run_config("joint", 0, for_eval=True),
                         tempfile.mkdtemp(prefix="merge-study-"))
  if not results.get("pretrained"):
    start = time.time()
    results["pretrained"] = _row(train.evaluate(
        eval_run, mg.load_params(eval_run, "pretrained"), "pretrained"))
    results["pretrained_wall_s"] = round(time.time() - start, 1)
    folder.save(results)
  for seed in _SEEDS.value:
    if seed in seeds:
      continue
    seeds[seed] = one_seed(int(seed), eval_run)
    logging.info("seed %s: %s", seed, seeds[seed]["wall_s"])
    folder.save(results)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run_all)


if __name__ == "__main__":
  app.run(main)
