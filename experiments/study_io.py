"""What the protocol's studies share: training an arm's run for a seed, the test halves
of the packaged retrieval sets, per-query reciprocal ranks and the machine's name
(no flags here: each study defines its own)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

K = 10
# The cells the default-recipe studies score: full, narrow, shallow.
CELLS = ((6, 384), (6, 32), (2, 64))


def train(out: str, arm: str, seed: int, config: str, overrides=()) -> float:
  """Trains <out>/<arm>_s<seed> with `config` and `overrides` ('--config.x=v' flags);
  0 if it had finished, else the seconds it took. The end-of-run evaluation is made
  small: studies evaluate the test halves themselves."""
  workdir = os.path.join(out, f"{arm}_s{seed}")
  if os.path.exists(os.path.join(workdir, "metrics.json")):
    return 0.0
  start = time.time()
  cmd = [sys.executable, "-m", "experiments.train", f"--config={config}",
         f"--workdir={workdir}", f"--config.seed={seed}", "--config.eval.before=False",
         "--config.eval.ood=('docstrings',)", "--config.eval.ood_queries=32",
         "--config.eval.wordnet_queries=0", "--config.eval.lee=False",
         "--config.eval.simlex=False", "--config.eval.wordsim=False",
         "--config.eval.polarity=False", "--config.eval.newsgroup=False", *overrides]
  print(" ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  return time.time() - start


def test_tasks(tfds_dir: str | None = None, first: int | None = None):
  """The test halves of the three sets (`half_tasks`)."""
  return half_tasks("test", tfds_dir, first)


def half_tasks(half: str, tfds_dir: str | None = None, first: int | None = None):
  """The `half` ('dev' or 'test') of the three sets, every query of it (`first`: only
  the first that many, for a smoke run), as training builds them (built under
  `tfds_dir`, default the config's data.tfds_dir)."""
  from experiments.splits import packaged_tasks
  from jaxembed.evals import splits
  out = {}
  for t in packaged_tasks(tfds_dir):
    half_task = t.with_queries(lambda q, n=t.name: splits.keep(q, n, half))
    if first is not None:
      kept = set(half_task.queries[:first])
      half_task = half_task.with_queries(lambda q, kept=kept: q in kept)
    out[t.name] = half_task
  return out


def reciprocal_ranks(scores: np.ndarray, relevance: np.ndarray, k: int = K) -> np.ndarray:
  """Per query: 1 / rank of the first relevant document in the top k, else 0."""
  from jaxembed.evals.retrieval import top_k
  ranked = np.take_along_axis(relevance, top_k(scores, k), axis=1) > 0
  first = np.argmax(ranked, axis=1)
  return np.where(ranked.any(axis=1), 1.0 / (first + 1), 0.0)


def evaluate_cells(path: str, tasks, cells=CELLS) -> dict:
  """{set: {'layer_dim': [reciprocal rank per query]}} of the model at `path`, each
  cell's vectors the layer's first dims, renormalised, scored by cosine."""
  import jaxembed
  model = jaxembed.load(path)
  out = {}
  for name, task in tasks.items():
    q = model.encode_all_layers(task.queries, batch_size=64)
    d = model.encode_all_layers(task.corpus, batch_size=64)
    out[name] = {}
    for layer, dim in cells:
      def unit(x):
        v = x[:, layer - 1, :dim].astype(np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
      rr = reciprocal_ranks(unit(q) @ unit(d).T, task.relevance)
      out[name][f"{layer}_{dim}"] = [round(float(x), 6) for x in rr]
  return out


SET_NAMES = {"manpages": "man pages", "docstrings": "docstrings", "wordnet": "WordNet"}


def cell_label(cell: str) -> str:
  """'6_384' -> '(6, 384)'."""
  return f"({cell.replace('_', ', ')})"


def finished_seeds(rr: dict, arms, sets, cells) -> tuple[list[str], list[str]]:
  """(every seed some arm of `arms` has in rr[arm][seed][set][cell], in order; those
  every arm has finished at every set and cell: the seeds a table may use)."""
  seeds = sorted({s for a in arms for s in rr[a]}, key=int)
  done = [s for s in seeds if all(
      s in rr[a] and all(c in rr[a][s].get(n, {}) for n in sets for c in cells)
      for a in arms)]
  return seeds, done


def seeds_phrase(done) -> str:
  """How a table's header names its seeds: their mean and sample sd, or the one seed."""
  if len(done) > 1:
    return f"mean ± sample sd over seeds {', '.join(done)}; "
  return f"seed {', '.join(done)}; "


def unfinished_note(seeds, done) -> str:
  """The line naming the seeds a table leaves out ('' when none)."""
  skipped = [s for s in seeds if s not in done]
  if not skipped:
    return ""
  return f"Seeds not in the tables yet (some arm unfinished): {', '.join(skipped)}."


def table_text(lines: list[str], seeds, done, results: dict) -> str:
  """A table's text: `lines`, the unfinished-seeds line when some seed is left out, and
  the training wall times."""
  note = unfinished_note(seeds, done)
  return "\n".join(lines + (["", note] if note else []) + wall_lines(results)) + "\n"


def seed_scores(rr: dict, seeds):
  """per_seed(arm, set, cell) -> [seeds, queries] scores of rr[arm][seed][set][cell]."""
  return lambda arm, n, cell: np.array([rr[arm][s][n][cell] for s in seeds])


def cell_tables(per_seed, arms, sets, cells, heading) -> list[str]:
  """Per set, `heading(set)` and a table of MRR@10 x100 per cell (rows) and arm
  (columns): the mean over seeds of each seed's mean over queries, ± the sample sd
  when there are several seeds."""
  from jaxembed.evals import stats
  lines = []
  for n in sets:
    lines += [heading(n), "", "| (layer, dim) | " + " | ".join(arms) + " |",
              "|---|" + "---|" * len(arms)]
    for cell in cells:
      row = []
      for arm in arms:
        means = 100 * per_seed(arm, n, cell).mean(axis=1)
        row.append(f"{means.mean():.1f}" + (f" ± {stats.sample_sd(means):.1f}"
                                            if len(means) > 1 else ""))
      lines.append(f"| {cell_label(cell)} | " + " | ".join(row) + " |")
    lines.append("")
  return lines


def verdict_rows(comparisons, sets, cells, per_seed, label=cell_label) -> list[str]:
  """One verdict row per (b, a, direction) of `comparisons`, set and cell: the paired
  difference b − a of per_seed(arm, set, cell) ([seeds, queries] scores) with its 95%
  bootstrap interval over seeds, then queries, judged by the rule of
  jaxembed/evals/stats.py (x100)."""
  from jaxembed.evals import stats
  rows = []
  for b, a, direction in comparisons:
    for n in sets:
      for cell in cells:
        interval = stats.paired_interval(per_seed(a, n, cell), per_seed(b, n, cell),
                                         resamples=2000)
        rows.append(stats.verdict_row(f"{b} − {a}, {SET_NAMES[n]}, {label(cell)}",
                                      interval, direction, scale=100))
  return rows


def verdict_section(comparisons, sets, cells, per_seed) -> list[str]:
  """The heading, header and rows of a study's paired-difference table for claims
  "b above a" with no effect size (`verdict_rows`)."""
  return ["", "Paired differences b − a, MRR@10 x100 (95% bootstrap interval over seeds, "
          "then queries; the claim's direction: b > a, no effect size; rule: "
          "jaxembed/evals/stats.py):", "",
          "| b − a, set, cell | claim | Δ | 95% interval | verdict |",
          "|---|---|---|---|---|"] + verdict_rows(comparisons, sets, cells, per_seed)


def bm25_scores(queries, docs) -> np.ndarray:
  """BM25 scores [Q, N] of every query against every document: the bm25s library,
  English stopwords (the studies' lexical peer: pip install bm25s)."""
  import bm25s
  retriever = bm25s.BM25()
  retriever.index(bm25s.tokenize(docs, stopwords="en", show_progress=False),
                  show_progress=False)
  ids, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en",
                                                  show_progress=False),
                                   k=len(docs), show_progress=False)
  out = np.zeros((len(queries), len(docs)), np.float64)
  np.put_along_axis(out, ids, scores, axis=1)
  return out


def maxsim_matrix(queries, docs) -> np.ndarray:
  """Exhaustive MaxSim [Q, N] of token matrices [t_i, dim] (`encode_multivector`'s),
  the documents scored in length buckets so that padding stays small."""
  from jaxembed.evals.late_interaction import maxsim_scores, pad_tokens
  padded = lambda ms: pad_tokens([m[None] for m in ms], 0, ms[0].shape[1])
  q, qm = padded(queries)
  out = np.zeros((len(queries), len(docs)), np.float32)
  lengths = np.array([len(d) for d in docs])
  edges = [-1, 16, 32, 64, 128, 1 << 30]
  for lo, hi in zip(edges, edges[1:]):
    rows = np.flatnonzero((lengths > lo) & (lengths <= hi))
    if len(rows):
      d, dm = padded([docs[i] for i in rows])
      out[:, rows] = maxsim_scores(q, qm, d, dm)
  return out


def wall_lines(results: dict) -> list[str]:
  """A table's closing line of training wall times per run (none when none stored)."""
  wall = results.get("train_wall_s", {})
  if not wall:
    return []
  return ["", "Training wall time per run (s): " + ", ".join(
      f"{k} {v:.0f}" for k, v in sorted(wall.items()))]


def machine() -> str:
  """The CPU's model name and core count, as a results table names its machine."""
  try:
    model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    model = "unknown CPU"
  return f"{model}, {os.cpu_count()} cores"
