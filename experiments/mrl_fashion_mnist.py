r"""MRL on Fashion-MNIST (Kusupati et al. 2022): Matryoshka vs fixed-feature classifiers,
and the largest fixed-feature model truncated or reduced with PCA, per dim.

  python -m experiments.mrl_fashion_mnist --config=configs/mrl_fashion_mnist.py \
      --out=runs/mrl --seeds=0,1,2

For each seed, trains every arm of the config (MRL, MRL-E, one FF model per dim) from
scratch on the training split, then scores each representation at each dim it has on
the test split: a linear probe (multinomial logistic regression fitted on
`probe.train_examples` training images) and 1-NN (cosine, same training images). The
largest FF model's representation is also truncated to each dim and reduced to it by
PCA (fitted on the probe's training images), and scored the same way. Writes
<out>/results.json after every arm (a rerun skips what is there) and <out>/table.md,
made from results.json alone (`--table_only` remakes it).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxembed.data import builders, pipeline
from jaxembed.evals.classification import pca_reduce, prefix_probes
from jaxembed.train import classify

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mrl_fashion_mnist.py")
_OUT = flags.DEFINE_string("out", "runs/mrl", "where results.json and table.md go")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def probe_scores(train_z, train_y, test_z, test_y, dims, c: float) -> dict:
  """{'linear': {dim: acc}, '1nn': {dim: acc}} on the first `dim` coordinates."""
  predictions = prefix_probes(train_z, train_y, test_z, dims, c)
  return {kind: {str(m): float(np.mean(pred == test_y)) for m, pred in by_dim.items()}
          for kind, by_dim in predictions.items()}


def run_seed(config, seed: int, results: dict, save) -> None:
  d, p = config.data, config.probe
  fm = builders.fashion_mnist(tfds_dir=d.tfds_dir)
  train_src, test_src = fm.as_data_source("train"), fm.as_data_source("test")
  probe_x, probe_y = pipeline.labelled_images(train_src, limit=p.train_examples)
  test_x, test_y = pipeline.labelled_images(test_src, limit=p.test_examples)
  dims = tuple(config.dims)
  largest = f"ff{dims[-1]}"
  for arm in config.arms:
    name = f"{arm}_s{seed}"
    if name in results["runs"] and (arm != largest or f"pca_s{seed}" in results["runs"]):
      logging.info("%s: in results.json, skipped", name)
      continue
    trained = classify.train_on_source(config, arm, train_src, seed=seed)
    t0 = time.time()
    tr_z, te_z = classify.features(trained, probe_x), classify.features(trained, test_x)
    own = trained.model.spec.dims
    record = probe_scores(tr_z, probe_y, te_z, test_y, own, p.c)
    record["head"] = {str(m): a for m, a in
                      classify.head_accuracy(trained, te_z, test_y).items()}
    record.update(train_seconds=trained.seconds, losses=trained.losses)
    results["runs"][name] = record
    if arm == largest:
      # The largest FF model, truncated and reduced with PCA to each smaller dim.
      results["runs"][f"truncated_s{seed}"] = probe_scores(tr_z, probe_y, te_z, test_y,
                                                           dims, p.c)
      reduced = {"linear": {}, "1nn": {}}
      for m in dims:
        a, b = pca_reduce(tr_z, te_z, m)
        for k, v in probe_scores(a, probe_y, b, test_y, (m,), p.c).items():
          reduced[k].update(v)
      results["runs"][f"pca_s{seed}"] = reduced
    logging.info("%s: trained in %.0fs, probed in %.0fs; linear %s", name,
                 trained.seconds, time.time() - t0, record["linear"])
    save()


ROWS = (("mrl", "MRL"), ("mrl_e", "MRL-E"), ("ff", "FF (one model per dim)"),
        ("truncated", "FF-max truncated"), ("pca", "FF-max + PCA"))


def _values(results, arm, metric, m, seeds):
  out = []
  for s in seeds:
    name = f"ff{m}_s{s}" if arm == "ff" else f"{arm}_s{s}"
    value = results["runs"].get(name, {}).get(metric, {}).get(str(m))
    if value is not None:
      out.append(100 * value)
  return np.array(out)


def _fmt(v):
  if not len(v):
    return "-"
  return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def table(results: dict) -> str:
  config, seeds = results["config"], results["seeds"]
  dims = config["dims"]
  lines = []
  for metric, title in (("head", "Trained heads' (no head for truncation and PCA)"),
                        ("linear", "Linear probe"), ("1nn", "1-NN (cosine)")):
    lines += [f"**{title} top-1 accuracy, %** (test split; mean ± std over seeds "
              f"{', '.join(map(str, seeds))})", "",
              "| dim | " + " | ".join(t for _, t in ROWS) + " | MRL − FF |",
              "|---" * (len(ROWS) + 2) + "|"]
    for m in dims:
      cols = [_fmt(_values(results, arm, metric, m, seeds)) for arm, _ in ROWS]
      mrl, ff = (_values(results, a, metric, m, seeds) for a in ("mrl", "ff"))
      gap = mrl - ff if len(mrl) == len(ff) and len(mrl) else np.array([])
      lines.append(f"| {m} | " + " | ".join(cols) + f" | {_fmt(gap)} |")
    lines.append("")
  walls = [r["train_seconds"] for r in results["runs"].values() if "train_seconds" in r]
  lines.append(f"Training: {len(walls)} models, {sum(walls) / 60:.1f} min in all "
               f"(wall of the whole command: {results.get('wall_s', 0) / 60:.1f} min).")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "results.json")
  results = {"runs": {}}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  if not _TABLE_ONLY.value:
    config = _CONFIG.value
    seeds = [int(s) for s in _SEEDS.value]
    as_json = json.loads(json.dumps(config.to_dict()))
    if results.get("config") not in (None, as_json):
      raise app.UsageError(f"{path} holds results of another config; use another --out")
    results.update(config=as_json,
                   seeds=sorted(set(results.get("seeds", [])) | set(seeds)))

    def save():
      with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
      os.replace(path + ".tmp", path)
    t0 = time.time()
    for seed in seeds:
      run_seed(config, seed, results, save)
    results["wall_s"] = results.get("wall_s", 0) + time.time() - t0
    save()
  text = table(results)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
