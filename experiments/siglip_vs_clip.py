r"""SigLIP vs CLIP across batch sizes (Zhai et al. 2023), zero-shot on Fashion-MNIST.

  python -m experiments.siglip_vs_clip --out=runs/siglip_vs_clip --batches=8,16,32,64,128 \
      --seeds=0,1,2

Each (loss, batch size, seed) trains configs/clip_fashion_mnist.py with
`positives=class` (uniform batches; every caption of an image's class is its positive:
CLIP = symmetric multi-positive InfoNCE, SigLIP = sigmoid with z = +1 for same-class
pairs; both with a learnable temperature, SigLIP's bias starting at -10) for the same
number of steps, and reads the zero-shot accuracy of the 10,000 test images at every
Matryoshka dim from the run's metrics. `--config_arg` picks the towers (default
`text=small`: a small text tower from scratch, so the grid fits 2 CPU cores; drop it
on an accelerator for the pretrained MiniLM tower). `--losses=siglip_prior` adds a
diagnostic arm: SigLIP with its bias starting at the log-odds of a same-class pair
(log 1/9) instead of the paper's -10. A finished run is read back, not
retrained, so a killed sweep resumes. Writes <out>/results.json and <out>/table.md
(`--table_only` remakes the table from results.json).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags, logging

from configs import clip_fashion_mnist
from experiments.results_io import check_settings, run_or_table, trained_metrics

_OUT = flags.DEFINE_string("out", "runs/siglip_vs_clip", "results.json, table.md, runs/")
_BATCHES = flags.DEFINE_list("batches", ["8", "16", "32", "64", "128"], "batch sizes")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
_LOSSES = flags.DEFINE_list("losses", ["clip", "siglip"], "|".join(("clip", "siglip",
                                                                      "siglip_prior")))
_STEPS = flags.DEFINE_integer("steps", 300, "training steps of every run")
_CONFIG_ARG = flags.DEFINE_string("config_arg", "text=small",
                                  "extra configs/clip_fashion_mnist.py arguments")
_IMAGES = flags.DEFINE_integer("images", 10000, "test images of the zero-shot evaluation")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

METRIC = "fashion_mnist/zero_shot_acc"
# siglip_prior: SigLIP with its bias starting at the log-odds of a same-class pair
# (1 in 10 with uniform batches of 10 balanced classes) instead of the paper's -10,
# a diagnostic arm: the paper's start suits batches of thousands, where nearly every
# pair is negative.
LOSSES = {"clip": ("clip", None), "siglip": ("siglip", None),
          "siglip_prior": ("siglip", float(np.log(0.1 / 0.9)))}


def run_config(loss: str, batch: int, seed: int):
  name, bias = LOSSES[loss]
  arg = ",".join(filter(None, [f"loss={name}", "positives=class", f"batch={batch}",
                               f"steps={_STEPS.value}", _CONFIG_ARG.value]))
  config = clip_fashion_mnist.get_config(arg)
  config.seed = seed
  if bias is not None:
    config.loss.sigmoid_bias = bias
    arg += f" +loss.sigmoid_bias={bias:.4f}"
  config.eval.images = _IMAGES.value
  config.eval.before = False        # towers from scratch (text=small): chance, 10%
  return arg, config


def one_run(loss: str, batch: int, seed: int) -> dict:
  """{'arg', 'acc': {dim: accuracy}, 'seconds'} of one trained run."""
  arg, config = run_config(loss, batch, seed)
  m, seconds = trained_metrics(lambda: config, os.path.join(
      _OUT.value, "runs", f"{loss}_b{batch}_s{seed}"))
  return {"arg": arg, "loss": loss, "batch": batch, "seed": seed,
          "acc": {str(r["dim"]): float(r[METRIC]) for r in m["after"]},
          "seconds": seconds}


def table(results: dict) -> str:
  runs = results.get("runs", {})
  if not runs:
    return "no runs yet\n"
  losses = [l for l in LOSSES if any(r["loss"] == l for r in runs.values())]
  batches = sorted({r["batch"] for r in runs.values()})
  dims = sorted({int(d) for r in runs.values() for d in r["acc"]})
  versus = [l for l in losses if l != "clip"] if "clip" in losses else []
  lines = []
  for dim in (dims[-1], dims[0]) if len(dims) > 1 else dims:
    lines += [f"Zero-shot accuracy (%), dim {dim}, mean ± sd over seeds; the last "
              "column(s) the difference to CLIP, paired by seed:", "",
              "| batch | " + " | ".join(losses + [f"{l} − clip" for l in versus]) + " |",
              "|---|" + "---|" * (len(losses) + len(versus))]
    for b in batches:
      per_loss = {l: {r["seed"]: 100 * r["acc"][str(dim)] for r in runs.values()
                      if r["loss"] == l and r["batch"] == b} for l in losses}
      cells = []
      for l in losses:
        v = np.array(list(per_loss[l].values()))
        cells.append(f"{v.mean():.1f} ± {v.std():.1f} (n={len(v)})" if len(v) else "–")
      for l in versus:
        seeds = sorted(set(per_loss["clip"]) & set(per_loss[l]))
        d = np.array([per_loss[l][s] - per_loss["clip"][s] for s in seeds])
        cells.append(f"{d.mean():+.1f} (seeds: {', '.join(f'{x:+.1f}' for x in d)})"
                     if len(d) else "–")
      lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append("")
  seconds = [r["seconds"] for r in runs.values()]
  lines.append(f"{len(runs)} runs of {results.get('steps')} steps "
               f"({results.get('config_arg') or 'default towers'}); "
               f"{sum(seconds) / 60:.1f} min of training and evaluation in all.")
  return "\n".join(lines) + "\n"


def run_all(folder, results) -> None:
  bad = [l for l in _LOSSES.value if l not in LOSSES]
  if bad:
    raise SystemExit(f"error: --losses: {bad} not valid; valid: {list(LOSSES)}")
  check_settings(folder, results, {"steps": _STEPS.value,
                                   "config_arg": _CONFIG_ARG.value,
                                   "images": _IMAGES.value})
  runs = results.setdefault("runs", {})
  grid = [(l, int(b), int(s)) for b in _BATCHES.value for s in _SEEDS.value
          for l in _LOSSES.value]
  for n, (loss, batch, seed) in enumerate(grid):
    key = f"{loss}_b{batch}_s{seed}"
    if key in runs:
      continue
    runs[key] = one_run(loss, batch, seed)
    logging.info("[%d/%d] %s: %s", n + 1, len(grid), key, runs[key]["acc"])
    folder.save(results)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run_all)


if __name__ == "__main__":
  app.run(main)
