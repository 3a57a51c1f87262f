r"""CRISP by the evidence protocol: clustering trained into the model against the same
clustering applied after training, fixed-selection pruning and the unpruned model, on
the test halves of the retrieval sets, three fresh seeds.

The claim (CRISP, its abstract): clustering token vectors inside training gives ~3x
fewer vectors while outperforming the unpruned model, and beats post-hoc clustering and
fixed pruning at the same budget. Stated before the runs:
  trained    configs/colbert_minilm.py:crisp=4:8 — each query's tokens clustered into
             4 centroids and each document's into 8 by k-means (5 Lloyd steps) in the
             forward pass, trained through (400 steps of 32 WordNet + FOLDOC pairs)
  unpruned   the multi-vector arm of experiments/multivector_study.py (the same
             config without clustering; the same seeds, data, batch and steps)
  post-hoc   the unpruned model, its vectors clustered into 4 / 8 centroids after
             encoding, by the forward pass's own k-means (as
             `EmbeddingModel.with_token_reduction` does)
  spacing, tail   the unpruned model keeping 4 / 8 evenly spaced or last tokens
             (applied after training here, not trained with the pruning)
  budgets    post-hoc k-means and spacing on documents only, 4 / 8 / 16 / 32 vectors
Every arm scores at (layer 6, 128 dims) by exhaustive MaxSim; MRR@10 per query.
Verdicts (jaxembed/evals/stats.py): trained - unpruned, trained - post-hoc and
trained - spacing, each claimed > 0 (no effect size for this backbone).

  python -m experiments.crisp_study --runs=runs/multivector_study --out=runs/crisp_study

Trains <out>/trained_s<seed> (a finished run is kept), then writes <out>/results.json
and <out>/table.md (`--table_only` remakes the table).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (K, machine, maxsim_matrix, reciprocal_ranks, test_tasks,
                                  train, wall_lines)

_RUNS = flags.DEFINE_string("runs", "runs/multivector_study",
                            "the multivector study's runs (multi_s<seed>: the unpruned arm)")
_OUT = flags.DEFINE_string("out", "runs/crisp_study", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "training seeds (those of --runs)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

CONFIG = "configs/colbert_minilm.py:crisp=4:8"
LAYER = 6
# arm -> (query reduction, document reduction) applied to the unpruned model.
POST_HOC = {"unpruned": (("none", 0), ("none", 0)),
            "post-hoc k-means 4:8": (("kmeans", 4), ("kmeans", 8)),
            "spacing 4:8": (("spacing", 4), ("spacing", 8)),
            "tail 4:8": (("tail", 4), ("tail", 8))}
for _n in (4, 8, 16, 32):
  POST_HOC[f"post-hoc k-means docs {_n}"] = (("none", 0), ("kmeans", _n))
  POST_HOC[f"spacing docs {_n}"] = (("none", 0), ("spacing", _n))
TRAINED = "trained CRISP 4:8"
DIRECTION = +1


def encoded(model, tasks) -> dict:
  """Per set: (query token matrices, document token matrices) at (6, 128)."""
  return {name: (model.encode_multivector(t.queries, is_query=True, layer=LAYER),
                 model.encode_multivector(t.corpus, is_query=False, layer=LAYER))
          for name, t in tasks.items()}


def reduced(matrices, how: str, k: int) -> list[np.ndarray]:
  """The token matrices reduced as the model's forward pass reduces them
  (`models/multivector.reduce_tokens`, on the layer's own vectors: k-means and the
  selections act per layer), in one padded call: what `with_token_reduction` gives."""
  from jaxembed.evals.late_interaction import pad_tokens
  from jaxembed.models.multivector import reduce_tokens
  if how == "none":
    return matrices
  tokens, counted = pad_tokens([m[None] for m in matrices], 0, matrices[0].shape[1])
  vectors, mask = reduce_tokens(tokens[:, None], counted, how, k)
  vectors, mask = np.asarray(vectors[:, 0]), np.asarray(mask)
  return [v[m > 0] for v, m in zip(vectors, mask)]


def scored(per_set: dict, tasks, query=("none", 0), doc=("none", 0)) -> dict:
  out = {}
  for name, (q, d) in per_set.items():
    q, d = reduced(q, *query), reduced(d, *doc)
    out[name] = {
        "rr": np.round(reciprocal_ranks(maxsim_matrix(q, d), tasks[name].relevance),
                       6).tolist(),
        "query_vectors": float(np.mean([len(v) for v in q])),
        "doc_vectors": float(np.mean([len(v) for v in d]))}
  return out


def run(folder, results: dict) -> None:
  import jaxembed
  seeds = [int(s) for s in _SEEDS.value]
  wall = dict(results.get("train_wall_s", {}))
  for seed in seeds:
    took = train(folder.out, "trained", seed, CONFIG)
    if took:
      wall[f"trained_s{seed}"] = round(took, 1)
  tasks = test_tasks()
  results.update({"k": K, "split": "test", "seeds": seeds, "config": CONFIG,
                  "machine": machine(), "train_wall_s": wall,
                  "queries": {n: len(t.queries) for n, t in tasks.items()},
                  "corpus": {n: len(t.corpus) for n, t in tasks.items()}})
  arms = results.setdefault("arms", {})
  for seed in map(str, seeds):
    if seed in arms.get(TRAINED, {}):
      continue
    base = encoded(jaxembed.load(os.path.join(_RUNS.value, f"multi_s{seed}")), tasks)
    for arm, (query, doc) in POST_HOC.items():
      arms.setdefault(arm, {})[seed] = scored(base, tasks, query, doc)
    trained = jaxembed.load(os.path.join(folder.out, f"trained_s{seed}"))
    arms.setdefault(TRAINED, {})[seed] = scored(encoded(trained, tasks), tasks)
    print(f"seed {seed} evaluated", flush=True)
    folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  sets = list(results["queries"])
  names = {"manpages": "man pages", "docstrings": "docstrings", "wordnet": "WordNet"}
  arms = results["arms"]

  def mean_sd(arm, name):
    vals = [100 * np.mean(arms[arm][s][name]["rr"]) for s in seeds]
    return f"{np.mean(vals):.1f} ± {stats.sample_sd(vals):.1f}"

  def vectors(arm, name):
    q = np.mean([arms[arm][s][name]["query_vectors"] for s in seeds])
    d = np.mean([arms[arm][s][name]["doc_vectors"] for s in seeds])
    return f"{q:.0f} / {d:.1f}"

  lines = [f"Test halves, MRR@{results['k']} x100 at (6, 128), mean ± sample sd over seeds "
           f"{', '.join(seeds)}; vectors per query / per document (mean); "
           f"{results['machine']}.", "",
           "| arm | " + " | ".join(f"{names[n]} ({results['queries'][n]} q, "
                                    f"{results['corpus'][n]} docs) | vectors q / d"
                                    for n in sets) + " |",
           "|---|" + "---|---|" * len(sets)]
  order = ["unpruned", TRAINED, "post-hoc k-means 4:8", "spacing 4:8", "tail 4:8"] + [
      a for a in arms if "docs" in a]
  for arm in order:
    lines.append(f"| {arm} | " + " | ".join(f"{mean_sd(arm, n)} | {vectors(arm, n)}"
                                            for n in sets) + " |")
  lines += ["", f"{TRAINED} minus each baseline, MRR@10 x100 (paired by seed and query; "
            "95% bootstrap interval over seeds, then queries; the claim: Δ > 0):", "",
            "| comparison, set | claim | Δ | 95% interval | verdict |", "|---|---|---|---|---|"]
  for base in ("unpruned", "post-hoc k-means 4:8", "spacing 4:8"):
    for n in sets:
      a = np.array([arms[base][s][n]["rr"] for s in seeds])
      b = np.array([arms[TRAINED][s][n]["rr"] for s in seeds])
      interval = stats.paired_interval(a, b, resamples=2000)
      lines.append(stats.verdict_row(f"vs {base}, {names[n]}", interval, DIRECTION,
                                     scale=100))
  return "\n".join(lines + wall_lines(results)) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
