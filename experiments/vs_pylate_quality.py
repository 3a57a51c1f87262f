r"""jaxembed's multi-vector training against PyLate's on the same pairs: quality.

Both arms train all-MiniLM-L6-v2 with a 128-wide token projection by InfoNCE over
MaxSim (in-batch negatives, scale 1), 400 steps of the same 32 WordNet + FOLDOC
pairs per step in the same order (`jaxembed.train.inputs.train_text_batches` of
configs/colbert_minilm.py at the seed), with the same optimiser settings (AdamW,
learning rate 5e-5, 40 warmup steps then linear to 0, weight decay 0.01, eps 1e-6,
gradient norm clipped at 1), queries of 32 tokens expanded with [MASK], documents cut
to 33 tokens in training and 180 in evaluation, punctuation skipped:
  jaxembed  configs/colbert_minilm.py (experiments/multivector_matryoshka.py's `multi`
            arm: `--ours_runs` reuses its runs)
  pylate    PyLate 1.6's models.ColBERT + losses.Contrastive, trained by
            experiments/pylate_peer.py in PyLate's own Python (`--peer_python`)
What differs is each library's own: the projection's random initialisation, dropout's
masks, PyLate's tokenizer (Hugging Face's) against ours, and the matmul precision:
jaxembed's default model.dtype=auto (bfloat16 inputs with float32 accumulation on a CPU
with AVX512-BF16 or AMX, float32 elsewhere; the run's precision.json says which)
against PyLate's float32. Each model's own `encode`
gives the token vectors; both are scored by the same exhaustive MaxSim on the test
halves of WordNet (in domain), the man pages and docstrings (out of domain), MRR@10.

The claim, stated before the runs: the two implementations of one method give the same
quality — parity within ±2.0 MRR@10 points per set (jaxembed/evals/stats.py's parity
rule on the paired difference's 95% interval over seeds, then queries). Training
throughput is benchmarks/vs_pylate.py's (both sides in one run); the wall times here
were taken at different moments.

  python -m experiments.vs_pylate_quality --out=runs/vs_pylate --seeds=1 \
      --peer_python=<a Python with pylate 1.6.0> [--ours_runs=runs/multivector_matryoshka]

Writes <out>/results.json and <out>/table.md (from results.json alone: `--table_only`);
finished runs and scores are kept, so an interrupted command resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
from absl import app, flags

from experiments.results_io import run_or_table
from experiments.study_io import (SET_NAMES, finished_seeds, machine, maxsim_matrix,
                                  reciprocal_ranks, seeds_phrase, table_text, test_tasks,
                                  train)

CONFIG = "configs/colbert_minilm.py"
ARMS = ("jaxembed", "pylate")
MARGIN = 0.02                       # the parity margin, MRR@10 (2.0 points)
CELL = "full"                       # the last layer, every dim: the one cell both train

_OUT = flags.DEFINE_string("out", "runs/vs_pylate", "where runs and results go")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "training seeds")
_PEER = flags.DEFINE_string("peer_python", os.environ.get("JAXEMBED_PYLATE_PYTHON", ""),
                            "a Python with pylate 1.6.0 (default $JAXEMBED_PYLATE_PYTHON)")
_OURS = flags.DEFINE_string("ours_runs", "", "a folder whose multi_s<seed> runs are this "
                            "config's (experiments/multivector_matryoshka.py's --out): "
                            "reused instead of training again")
_VARIANT = flags.DEFINE_enum("variant", "", ["", "smoke"], "config variant: '' (2 CPU "
                             "cores), smoke (a tiny random model, for trying the script)")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "where datasets are built (default: the "
                                "config's data.tfds_dir)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def study_config(seed: int, variant: str, tfds_dir: str = ""):
  from jaxembed.configs import colbert_minilm
  c = colbert_minilm.get_config(variant or None)
  c.seed = seed
  if tfds_dir:
    c.data.tfds_dir = tfds_dir
  return c


def write_batches(path: str, config) -> None:
  """The run's batches as texts, one JSON line per step (written whole, then renamed)."""
  from jaxembed.train.inputs import train_text_batches
  batches = train_text_batches(config)
  with open(path + ".tmp", "w") as f:
    for _ in range(config.train.steps):
      b = next(batches)
      anchors = [b["instruction"] + t for t in b["anchor"]] if b["instruction"] else b["anchor"]
      f.write(json.dumps({"anchor": anchors, "positive": b["positive"]}) + "\n")
  os.replace(path + ".tmp", path)


def peer_spec(config, model: str, out: str, batches: str, texts: str) -> dict:
  """experiments/pylate_peer.py's settings, read from the config jaxembed trains with."""
  o, mv = config.optim, config.model.multivector
  if o.name != "adamw" or o.schedule != "linear" or config.loss.name != "maxsim":
    raise ValueError("the peer is given AdamW, a linear schedule and InfoNCE over MaxSim; "
                     f"the config has {o.name}, {o.schedule}, {config.loss.name}")
  return {"model": model, "seed": int(config.seed), "out": out, "batches": batches,
          "eval": texts, "steps": int(config.train.steps), "dim": int(mv.dim),
          "query_prefix": mv.query_prefix, "document_prefix": mv.document_prefix,
          "query_length": int(mv.query_length),
          # ours: the text cut to data.seq_len tokens, then the marker; PyLate's length
          # counts the marker
          "train_document_length": int(config.data.seq_len) + 1,
          "document_length": int(config.eval.max_length) + 1,
          "temperature": 1.0 / float(config.loss.scale),
          "learning_rate": float(o.learning_rate), "warmup_steps": int(o.warmup_steps),
          "weight_decay": float(o.weight_decay), "b1": float(o.b1), "b2": float(o.b2),
          "eps": float(o.eps), "grad_clip": float(o.grad_clip)}


def unstack(stacked: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
  return np.split(stacked, np.cumsum(lengths)[:-1])


def score(queries, docs, task) -> list[float]:
  rr = reciprocal_ranks(maxsim_matrix(queries, docs), task.relevance)
  return [round(float(x), 6) for x in rr]


def score_ours(path: str, tasks) -> dict:
  import jaxembed
  model = jaxembed.load(path)
  return {n: {CELL: score(model.encode_multivector(t.queries, is_query=True),
                          model.encode_multivector(t.corpus, is_query=False), t)}
          for n, t in tasks.items()}


def logged_rate(workdir: str) -> float:
  """The run's training throughput, pairs/s: the median of its logged rates, the first
  (compilation) left out."""
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    rates = [json.loads(line).get("examples_per_sec") for line in f]
  rates = [r for r in rates[1:] if r]
  return round(float(np.median(rates)), 1) if rates else 0.0


def peer_rate(out: str, config) -> float:
  """PyLate's training throughput, pairs/s, from its train.json."""
  trained = json.load(open(os.path.join(out, "train.json")))
  return round(trained["steps"] * config.train.batch_size / trained["train_wall_s"], 1)


def model_folder(variant: str) -> str:
  """The base model's folder, as the peer reads it (a sentence-transformers folder)."""
  from jaxembed.models.loading import resolve_model_path
  return resolve_model_path(study_config(0, variant).model.path)


def run(folder, results: dict) -> None:
  settings = {"config": CONFIG, "variant": _VARIANT.value, "margin": MARGIN}
  if results.get("rr") and results.get("settings") != settings:
    raise SystemExit(f"error: {folder.path} holds runs made with "
                     f"{results.get('settings')}, not {settings}: use another --out")
  peer = _PEER.value
  if not peer or subprocess.run([peer, "-c", "import pylate"], capture_output=True,
                                env=dict(os.environ, PYTHONPATH="")).returncode:
    raise SystemExit(f"error: --peer_python={peer!r} is not a Python with pylate "
                     "(tests/fixtures/make_pylate_reference.py shows how to make one)")
  tasks = test_tasks(_TFDS_DIR.value or None, 100 if _VARIANT.value == "smoke" else None)
  results.update({"k": 10, "split": "test", "settings": settings, "machine": machine(),
                  "sets": list(tasks), "queries": {n: len(t.queries) for n, t in tasks.items()},
                  "corpus": {n: len(t.corpus) for n, t in tasks.items()}})
  texts = os.path.join(folder.out, "eval_texts.json")
  with open(texts + ".tmp", "w") as f:
    json.dump({n: {"queries": t.queries, "corpus": t.corpus} for n, t in tasks.items()}, f)
  os.replace(texts + ".tmp", texts)
  rr = results.setdefault("rr", {})
  wall = results.setdefault("train_wall_s", {})
  extra = [f"--config.data.tfds_dir={_TFDS_DIR.value}"] if _TFDS_DIR.value else []
  cfg_arg = f"{CONFIG}:{_VARIANT.value}" if _VARIANT.value else CONFIG
  for seed in [int(s) for s in _SEEDS.value]:
    config = study_config(seed, _VARIANT.value, _TFDS_DIR.value)
    ours = os.path.join(_OURS.value, f"multi_s{seed}") if _OURS.value else ""
    reused = bool(ours) and os.path.exists(os.path.join(ours, "metrics.json"))
    if not reused:
      took = train(folder.out, "jaxembed", seed, cfg_arg, extra)
      ours = os.path.join(folder.out, f"jaxembed_s{seed}")
      if took:
        wall[f"jaxembed_s{seed}"] = round(took, 1)
    results.setdefault("ours_runs", {})[str(seed)] = "reused" if reused else "trained"
    results.setdefault("pairs_per_s", {}).setdefault("jaxembed", {})[str(seed)] = \
        logged_rate(ours)
    if str(seed) not in rr.get("jaxembed", {}):
      rr.setdefault("jaxembed", {})[str(seed)] = score_ours(ours, tasks)
      folder.save(results)
    out = os.path.join(folder.out, f"pylate_s{seed}")
    if str(seed) in rr.get("pylate", {}):
      results["pairs_per_s"].setdefault("pylate", {})[str(seed)] = peer_rate(out, config)
      folder.save(results)
      continue
    os.makedirs(out, exist_ok=True)
    batches = os.path.join(out, "batches.jsonl")
    if not os.path.exists(batches):
      write_batches(batches, config)
    spec = os.path.join(out, "spec.json")
    json.dump(peer_spec(config, model_folder(_VARIANT.value), out, batches, texts),
              open(spec, "w"), indent=1)
    start = time.time()
    subprocess.run([peer, os.path.join(os.path.dirname(__file__), "pylate_peer.py"), spec],
                   check=True, env=dict(os.environ, PYTHONPATH=""))
    print(f"PyLate seed {seed}: {time.time() - start:.0f} s", flush=True)
    trained = json.load(open(os.path.join(out, "train.json")))
    wall[f"pylate_s{seed}"] = trained["train_wall_s"]
    results["pairs_per_s"].setdefault("pylate", {})[str(seed)] = peer_rate(out, config)
    got = {}
    for n, t in tasks.items():
      v = np.load(os.path.join(out, f"vectors_{n}.npz"))
      got[n] = {CELL: score(unstack(v["q"], v["q_lengths"]),
                            unstack(v["d"], v["d_lengths"]), t)}
    rr.setdefault("pylate", {})[str(seed)] = got
    results.setdefault("pylate_loss_last", {})[str(seed)] = trained["loss"][-20:]
    folder.save(results)


def table(results: dict) -> str:
  from jaxembed.evals import stats
  rr, sets = results["rr"], results["sets"]
  arms = [a for a in ARMS if a in rr]
  seeds, done = finished_seeds(rr, arms, sets, [CELL])
  scores = lambda arm, n: np.array([rr[arm][s][n][CELL] for s in done])  # noqa: E731
  lines = [f"Test halves (every test query), MRR@{results['k']} x100 of the last layer's "
           "128-wide token vectors, exhaustive MaxSim, " + seeds_phrase(done)
           + f"{results['machine']}.", "",
           "| set | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
  for n in sets:
    cells = []
    for arm in arms:
      per_seed = 100 * scores(arm, n).mean(axis=1)
      cells.append(f"{per_seed.mean():.1f}" + (f" ± {stats.sample_sd(per_seed):.1f}"
                                               if len(done) > 1 else ""))
    lines.append(f"| {SET_NAMES[n]} ({results['queries'][n]} queries, "
                 f"{results['corpus'][n]} documents) | " + " | ".join(cells) + " |")
  if set(ARMS) <= set(arms) and done:
    lines += ["", "Paired differences jaxembed − PyLate, MRR@10 x100 (95% bootstrap "
              "interval over seeds, then queries; the claim: parity within the margin; "
              "rule: jaxembed/evals/stats.py's parity):", "",
              "| jaxembed − PyLate, set | margin | Δ | 95% interval | verdict |",
              "|---|---|---|---|---|"]
    for n in sets:
      interval = stats.paired_interval(scores("pylate", n), scores("jaxembed", n),
                                       resamples=2000)
      lines.append(stats.parity_row(f"jaxembed − PyLate, {SET_NAMES[n]}", interval,
                                    results["settings"]["margin"], scale=100))
  rates = results.get("pairs_per_s", {})
  if all(rates.get(a, {}).get(s) for a in ARMS for s in done) and done:
    each = lambda a: " / ".join(f"{rates[a][s]:.1f}" for s in done)  # noqa: E731
    lines += ["", f"Training throughput, pairs/s (seed{'s' * (len(done) > 1)} "
              f"{', '.join(done)}): jaxembed "
              f"{each('jaxembed')} (its logged steps), PyLate {each('pylate')} (its "
              "training loop, model load left out); taken at different moments on the "
              "machine, not in one run: the ratio benchmarks/vs_pylate.py measures is "
              "the one to quote."]
  return table_text(lines, seeds, done, results)


def main(argv):
  del argv
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
