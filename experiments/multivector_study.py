r"""Single vector against multi-vector (late interaction) on one backbone, by the
evidence protocol: fresh seeds, the test halves of the retrieval sets, paired
differences with a two-level bootstrap interval (seeds, then queries), and a verdict by
the rule of jaxembed/evals/stats.py stated before the runs.

The claim (LIMIT, Weller et al. 2025; ColBERT, Khattab & Zaharia 2020): token-level
late interaction retrieves better than one pooled vector of the same encoder. Arms,
each all-MiniLM-L6-v2 fine-tuned 400 steps of 32 WordNet + FOLDOC pairs (the same
mixture, batch and steps):
  single   configs/minilm_wordnet_2d.py (the default recipe), its full cell (6, 384)
  multi    configs/colbert_minilm.py, (6, 128) token vectors, MaxSim
  bm25     BM25 (bm25s, English stop words): no training, no seed
Sets: man pages and docstrings (out of domain), WordNet (in domain), test halves
(eval.split=test); MRR@10 per query. Neither config was tuned on these sets: the
multi-vector arm takes PyLate's ColBERT defaults and the default recipe is as adopted.

  python -m experiments.multivector_study --out=runs/multivector_study

Runs <out>/<arm>_s<seed> (a finished run is kept, an interrupted one resumes), then
writes <out>/results.json (per arm, seed and set, the test queries' reciprocal ranks)
and <out>/table.md from it alone (`--table_only` remakes it), the block RESULTS.md
shows (experiments/report.py checks it).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (K, machine, maxsim_matrix, reciprocal_ranks, test_tasks,
                                  train, wall_lines)

ARMS = {"single": "configs/minilm_wordnet_2d.py", "multi": "configs/colbert_minilm.py"}
SETS = ("manpages", "docstrings", "wordnet")

_OUT = flags.DEFINE_string("out", "runs/multivector_study", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "training seeds (fresh: seed 0 "
                           "made the configs' README numbers)")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "evaluate the finished runs only")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def evaluate_single(workdir: str, tasks) -> dict:
  import jaxembed
  model = jaxembed.load(workdir)
  out = {}
  for name, task in tasks.items():
    q = model.encode(task.queries, layer=6, dim=384, batch_size=64)
    d = model.encode(task.corpus, layer=6, dim=384, batch_size=64)
    out[name] = reciprocal_ranks(q @ d.T, task.relevance).tolist()
  return out


def evaluate_multi(workdir: str, tasks) -> dict:
  import jaxembed
  model = jaxembed.load(workdir)
  out = {}
  for name, task in tasks.items():
    q = model.encode_multivector(task.queries, is_query=True, layer=6)
    d = model.encode_multivector(task.corpus, is_query=False, layer=6)
    out[name] = reciprocal_ranks(maxsim_matrix(q, d), task.relevance).tolist()
  return out


def evaluate_bm25(tasks) -> dict:
  import bm25s
  out = {}
  for name, task in tasks.items():
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(task.corpus, stopwords="en", show_progress=False),
                    show_progress=False)
    ids, _ = retriever.retrieve(bm25s.tokenize(task.queries, stopwords="en",
                                               show_progress=False),
                                k=K, show_progress=False)
    scores = np.full(task.relevance.shape, -np.inf)
    for row, top in enumerate(ids):
      scores[row, top] = K - np.arange(len(top))        # the order bm25s returned
    out[name] = reciprocal_ranks(scores, task.relevance).tolist()
  return out


def run(folder, results: dict) -> None:
  out = folder.out
  seeds = [int(s) for s in _SEEDS.value]
  wall = dict(results.get("train_wall_s", {}))
  if not _EVAL_ONLY.value:
    for seed in seeds:
      for arm in ARMS:
        took = train(out, arm, seed, ARMS[arm])
        if took:
          wall[f"{arm}_s{seed}"] = round(took, 1)
  tasks = test_tasks()
  results.update({"k": K, "split": "test", "seeds": seeds, "sets": list(SETS),
                  "queries": {n: len(t.queries) for n, t in tasks.items()},
                  "corpus": {n: len(t.corpus) for n, t in tasks.items()},
                  "train_wall_s": wall, "machine": machine(),
                  "rr": {"bm25": _rounded(evaluate_bm25(tasks))}})
  for arm, evaluate in (("single", evaluate_single), ("multi", evaluate_multi)):
    results["rr"][arm] = {str(s): _rounded(evaluate(os.path.join(out, f"{arm}_s{s}"),
                                                    tasks)) for s in seeds}
  folder.save(results)


def _rounded(per_set: dict) -> dict:
  return {name: [round(float(x), 6) for x in rr] for name, rr in per_set.items()}


# The claim tested, stated before the runs: multi-vector above single vector (+1), no
# effect size from the papers for this backbone and these sets.
DIRECTION = +1


def table(results: dict) -> str:
  """The section's tables: MRR@10 per arm (mean, sample sd over seeds), the paired
  difference multi - single with its two-level bootstrap interval and the verdict."""
  from jaxembed.evals import stats
  seeds = [str(s) for s in results["seeds"]]
  names = {"manpages": "man pages", "docstrings": "docstrings", "wordnet": "WordNet"}
  lines = [f"Test halves (eval.split=test), MRR@{results['k']} x100, mean ± sample sd over "
           f"seeds {', '.join(seeds)}; {results['machine']}.", "",
           "| arm | " + " | ".join(f"{names[n]} ({results['queries'][n]} queries, "
                                    f"{results['corpus'][n]} docs)"
                                    for n in results["sets"]) + " |",
           "|---|" + "---|" * len(results["sets"])]
  rows = (("BM25 (bm25s)", None), ("single vector, (6, 384)", "single"),
          ("multi-vector, (6, 128) MaxSim", "multi"))
  for label, arm in rows:
    cells = []
    for n in results["sets"]:
      if arm is None:
        cells.append(f"{100 * np.mean(results['rr']['bm25'][n]):.1f}")
      else:
        per_seed = [100 * np.mean(results["rr"][arm][s][n]) for s in seeds]
        cells.append(f"{np.mean(per_seed):.1f} ± {stats.sample_sd(per_seed):.1f}")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += ["", "Multi-vector minus single vector, MRR@10 x100 (paired by seed and query; "
            "95% bootstrap interval over seeds, then queries; the claim: Δ > 0, no effect "
            "size; verdict by the rule of jaxembed/evals/stats.py):", "",
            "| set | claim | Δ | 95% interval | verdict |", "|---|---|---|---|---|"]
  for n in results["sets"]:
    a = np.array([results["rr"]["single"][s][n] for s in seeds])
    b = np.array([results["rr"]["multi"][s][n] for s in seeds])
    i = stats.paired_interval(a, b, resamples=2000)
    lines.append(stats.verdict_row(names[n], i, DIRECTION, scale=100))
  return "\n".join(lines + wall_lines(results)) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
