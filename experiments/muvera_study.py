r"""MUVERA over trained token vectors: how many of exact MaxSim's top 10 documents
are among the first N candidates of a fixed-dimensional-encoding (FDE) search, what
reranking those candidates costs in quality, and what it saves in time and index size.

The claim (MUVERA, Dhulipala et al. 2024): single-vector inner-product search over FDEs,
then exact MaxSim over a few hundred candidates, keeps the exact ranking's top results
at a fraction of exhaustive MaxSim's cost. The models are the multi-vector arm of
experiments/multivector_study.py (configs/colbert_minilm.py, seeds 1-3, (6, 128) token
vectors); nothing is trained here. One FDE setting, chosen before the runs for memory
(not tuned): 20 repetitions, 4 SimHash bits (16 buckets), inner projection to 16, no
final projection: 5,120 dims, empty document buckets filled.

  python -m experiments.muvera_study --runs=runs/multivector_study --out=runs/muvera_study

Part 1, per seed: the test halves of man pages, docstrings and WordNet as they are
(1-2.5k documents each). Part 2, seed 1: the man-page test queries against a corpus of
>= 100k real documents, the man pages' 1,075 with every WordNet gloss (117,659) added
as distractors; recall, MRR@10 and the wall time of exhaustive MaxSim (jitted, blocked,
documents bucketed by length) against FDE search plus reranking. Writes
<out>/results.json and <out>/table.md (`--table_only` remakes the table).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import K, machine, maxsim_matrix, reciprocal_ranks, test_tasks

_RUNS = flags.DEFINE_string("runs", "runs/multivector_study",
                            "the multivector study's runs (multi_s<seed> inside)")
_OUT = flags.DEFINE_string("out", "runs/muvera_study", "where results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "the multi-vector runs' seeds")
_WORDNET = flags.DEFINE_string("wordnet_dir", "/usr/share/wordnet",
                               "WordNet 3.0 database files (the distractor glosses)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

CANDIDATES = (100, 200, 500)
FDE = dict(num_repetitions=20, num_simhash=4, projection_dim=16)
LAYER = 6


def encode(model, texts, is_query: bool) -> list[np.ndarray]:
  return [m.astype(np.float32) for m in
          model.encode_multivector(texts, is_query=is_query, layer=LAYER)]


def fde_candidates(q_fde, d_fde, n: int) -> np.ndarray:
  from jaxembed.evals.retrieval import top_k
  return top_k(q_fde @ d_fde.T, min(n, d_fde.shape[0]))


def reranked(queries, docs, candidates) -> np.ndarray:
  """Scores [Q, N]: exact MaxSim on each query's candidates, -inf elsewhere."""
  from jaxembed.evals import muvera
  out = np.full((len(queries), len(docs)), -np.inf, np.float32)
  for row, (q, cand) in enumerate(zip(queries, candidates)):
    out[row, cand] = muvera.maxsim(q, [docs[j] for j in cand])
  return out


def recall_of_exact(exact: np.ndarray, candidates: np.ndarray) -> np.ndarray:
  """Per query: the share of exact MaxSim's top K among the candidates."""
  from jaxembed.evals.retrieval import top_k
  top = top_k(exact, K)
  return np.array([np.isin(t, c).mean() for t, c in zip(top, candidates)])


def measure(queries, docs, relevance, *, timed: bool = False) -> dict:
  from jaxembed.evals import muvera
  cfg = muvera.FDEConfig(dim=docs[0].shape[1], **FDE)
  out = {}
  start = time.perf_counter()
  d_fde = muvera.encode(docs, cfg, is_query=False)
  out["fde_encode_docs_s"] = time.perf_counter() - start
  if timed:                                   # compile the blocks' programs first
    maxsim_matrix(queries[:2], docs[:4096])
  start = time.perf_counter()
  exact = maxsim_matrix(queries, docs)
  out["exact_s"] = time.perf_counter() - start
  out["rr_exact"] = reciprocal_ranks(exact, relevance).tolist()
  for n in CANDIDATES:
    start = time.perf_counter()
    q_fde = muvera.encode(queries, cfg, is_query=True)
    cand = fde_candidates(q_fde, d_fde, n)
    scores = reranked(queries, docs, cand)
    out[f"fde{n}_s"] = time.perf_counter() - start
    out[f"recall{n}"] = recall_of_exact(exact, cand).tolist()
    out[f"rr_fde{n}"] = reciprocal_ranks(scores, relevance).tolist()
  out["token_bytes"] = int(sum(d.size for d in docs) * 4)
  out["fde_bytes"] = int(d_fde.size * 4)
  out["fde_dim"] = int(d_fde.shape[1])
  return {k: (np.round(v, 6).tolist() if isinstance(v, list) else v)
          for k, v in out.items()}


def distractors(wordnet_dir: str) -> list[str]:
  from jaxembed.data.wordnet import read_synsets
  return [s.definition for s in read_synsets(wordnet_dir)]


def run(folder, results: dict) -> None:
  import jaxembed
  seeds = [int(s) for s in _SEEDS.value]
  tasks = test_tasks()
  results.update({"k": K, "split": "test", "seeds": seeds, "fde": FDE,
                  "candidates": list(CANDIDATES), "machine": machine(),
                  "queries": {n: len(t.queries) for n, t in tasks.items()},
                  "corpus": {n: len(t.corpus) for n, t in tasks.items()}})
  per_set = results.setdefault("sets", {})
  for seed in seeds:
    if str(seed) in per_set:
      continue
    model = jaxembed.load(os.path.join(_RUNS.value, f"multi_s{seed}"))
    per_set[str(seed)] = {
        name: measure(encode(model, t.queries, True), encode(model, t.corpus, False),
                      t.relevance) for name, t in tasks.items()}
    print(f"seed {seed}: sets done", flush=True)
    folder.save(results)
  if "large" not in results:
    model = jaxembed.load(os.path.join(_RUNS.value, f"multi_s{seeds[0]}"))
    task = tasks["manpages"]
    extra = distractors(_WORDNET.value)
    start = time.perf_counter()
    docs = encode(model, list(task.corpus) + extra, False)
    took = time.perf_counter() - start
    relevance = np.concatenate(
        [task.relevance, np.zeros((len(task.queries), len(extra)), task.relevance.dtype)],
        axis=1)
    large = measure(encode(model, task.queries, True), docs, relevance, timed=True)
    large.update(seed=seeds[0], documents=len(docs), distractors=len(extra),
                 encode_docs_s=round(took, 1),
                 tokens=int(sum(len(d) for d in docs)))
    results["large"] = large
    folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  names = {"manpages": "man pages", "docstrings": "docstrings", "wordnet": "WordNet"}
  cand = results["candidates"]
  fde = results["fde"]
  lines = [
      f"FDE: {fde['num_repetitions']} repetitions x {2 ** fde['num_simhash']} buckets x "
      f"{fde['projection_dim']} dims (fixed before the runs). Test halves, the multi-vector "
      f"models of seeds {', '.join(seeds)}; mean ± sample sd over seeds; "
      f"{results['machine']}.", "",
      "Recall of exact MaxSim's top 10 among the first N FDE candidates (%), and MRR@10 "
      "x100 of exact MaxSim and of the reranked candidates:", "",
      "| set (docs) | " + " | ".join(f"recall, N={n}" for n in cand)
      + " | MRR exact | " + " | ".join(f"MRR, N={n}" for n in cand) + " |",
      "|---|" + "---|" * (2 * len(cand) + 1)]
  for name in results["queries"]:
    def cell(key):
      vals = [100 * np.mean(results["sets"][s][name][key]) for s in seeds]
      return f"{np.mean(vals):.1f} ± {stats.sample_sd(vals):.1f}"
    lines.append(f"| {names[name]} ({results['corpus'][name]}) | "
                 + " | ".join(cell(f"recall{n}") for n in cand) + " | " + cell("rr_exact")
                 + " | " + " | ".join(cell(f"rr_fde{n}") for n in cand) + " |")
  big = results.get("large")
  if big:
    mb = lambda b: f"{b / 2**20:,.0f} MB"
    lines += [
        "", f"Man-page test queries ({results['queries']['manpages']}) against "
        f"{big['documents']:,} documents (the man pages' {big['documents'] - big['distractors']:,} "
        f"and {big['distractors']:,} WordNet glosses), seed {big['seed']}; {big['tokens']:,} "
        f"document token vectors ({mb(big['token_bytes'])} float32), FDE index "
        f"{mb(big['fde_bytes'])} ({big['fde_dim']} dims); encoding the documents took "
        f"{big['encode_docs_s']:.0f} s, their FDEs {big['fde_encode_docs_s']:.0f} s.", "",
        "| search | recall of exact top 10 (%) | MRR@10 x100 | wall time, all queries (s) | vs exact |",
        "|---|---|---|---|---|",
        f"| exhaustive MaxSim | 100 | {100 * np.mean(big['rr_exact']):.1f} | "
        f"{big['exact_s']:.1f} | 1.00 |"]
    for n in cand:
      lines.append(f"| FDE, rerank N={n} | {100 * np.mean(big[f'recall{n}']):.1f} | "
                   f"{100 * np.mean(big[f'rr_fde{n}']):.1f} | {big[f'fde{n}_s']:.1f} | "
                   f"{big[f'fde{n}_s'] / big['exact_s']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
