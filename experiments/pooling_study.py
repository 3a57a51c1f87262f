r"""Pooling and attention on a decoder LLM (the issue's study; configs/smollm2_pooling.py):
SmolLM2-135M-Instruct, causal vs bidirectional attention x {last token, mean, NV-Embed's
latent attention, multi-layer trainable pooling}, frozen decoder, 3 seeds.

  python -m experiments.pooling_study --out=runs/pooling_study

On 2 CPU cores the decoder is frozen: every text (training pairs and evaluation sets,
up to 32 tokens, an end-of-text token appended as in E5-Mistral / NV-Embed's last-token
pooling) is encoded once per attention mode, keeping the last layer's token states and
each layer's last-token state; each arm then trains its pooler followed by a linear
map (initialised to the identity) with InfoNCE (scale 20, in-batch negatives) on those
states, and is scored on held-out WordNet retrieval, the out-of-domain man pages and
Python docstrings, Lee, SimLex-999 and WordSim-353 (configs/smollm2_pooling.py's
evaluation). The untrained last-token and mean vectors of each attention mode are
scored too ('zero-shot'). The full-training arms (LoRA on every projection) are the
config's, for an accelerator.

Writes <out>/results.json and <out>/table.md (`--table_only` remakes the table); runs
already in results.json are skipped, so a stopped study resumes.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from absl import app, flags

from experiments.pooling_heads import (EOS, encode_texts, score, study_data,
                                       train_head)
from experiments.results_io import check_settings, percent_mean_sd, run_or_table


_OUT = flags.DEFINE_string("out", "runs/pooling_study", "results.json, table.md")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (head init and batch order)")
_ATTENTION = flags.DEFINE_list("attention", ["causal", "bidirectional"], "attention modes")
_POOLING = flags.DEFINE_list("pooling", ["last_token", "mean", "latent", "multilayer"],
                             "poolings")
_PAIRS = flags.DEFINE_integer("train_pairs", 4096, "WordNet training pairs (a fixed sample)")
_STEPS = flags.DEFINE_integer("steps", 200, "training steps of each head")
_BATCH = flags.DEFINE_integer("batch", 32, "pairs per step")
_LR = flags.DEFINE_float("lr", 1e-3, "AdamW learning rate of the head")
_SEQ = flags.DEFINE_integer("seq_len", 32, "tokens per text, end-of-text token included")
_EOS = flags.DEFINE_string("eos", EOS, "token appended to every text ('': none; "
                           "last-token pooling then reads the text's own last token)")
_SMOKE = flags.DEFINE_bool("smoke", False, "a tiny random decoder and tiny sets (tests)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

COLUMNS = (("wordnet/mrr_at_10", "WordNet MRR@10"), ("manpages/mrr_at_10", "man pages MRR@10"),
           ("docstrings/mrr_at_10", "docstrings MRR@10"), ("lee/spearman", "Lee"),
           ("simlex/spearman", "SimLex"), ("wordsim/spearman", "WordSim"))
ZERO_SHOT = ("last_token", "mean")


def eos_suffix(eos: str) -> str:
  """What a run key and a table row add for a non-default --eos."""
  return "" if eos == EOS else " (no EOS)" if not eos else f" (EOS {eos})"


def study_config(attention: str):
  from configs import smollm2_pooling
  return smollm2_pooling.get_config(f"attention={attention}" + (",smoke" if _SMOKE.value else ""))


def run_all(folder, results) -> None:
  import jax
  settings = {"train_pairs": _PAIRS.value, "steps": _STEPS.value, "batch": _BATCH.value,
              "lr": _LR.value, "seq_len": _SEQ.value, "smoke": _SMOKE.value}
  tag = eos_suffix(_EOS.value)   # runs with another --eos share the folder, keyed apart
  check_settings(folder, results, settings)
  runs = results.setdefault("runs", {})
  for attention in _ATTENTION.value:
    config = study_config(attention)
    keys = [f"{attention}/zero_shot_{k}{tag}" for k in ZERO_SHOT] + [
        f"{attention}/{p}{tag}_s{s}" for p in _POOLING.value for s in _SEEDS.value]
    if all(k in runs for k in keys):
      continue
    start = time.time()
    pairs, tasks = study_data(config, _PAIRS.value)
    texts = list(dict.fromkeys([t for p in pairs for t in p] + [
        t for task in tasks for t in task.texts]))
    logging.info("%s: %d training pairs, %d texts to encode", attention, len(pairs), len(texts))
    feats = encode_texts(config, texts, seq_len=_SEQ.value, eos=_EOS.value)
    encode_s = round(time.time() - start, 1)
    rows = np.stack([feats.rows([a for a, _ in pairs]), feats.rows([p for _, p in pairs])], 1)
    for kind in ZERO_SHOT:
      key = f"{attention}/zero_shot_{kind}{tag}"
      if key not in runs:
        from jaxembed.models.pooling import FUNCTIONS
        fn = jax.jit(FUNCTIONS[kind])
        runs[key] = {"attention": attention, "pooling": kind, "seed": None, "eos": _EOS.value,
                     "after": score(tasks, feats, lambda r: np.asarray(
                         fn(feats.tokens[r], feats.mask[r]))),
                     "seconds": 0.0, "encode_seconds": encode_s}
        folder.save(results)
    for kind in _POOLING.value:
      for s in _SEEDS.value:
        key = f"{attention}/{kind}{tag}_s{s}"
        if key in runs:
          continue
        t0 = time.time()
        head, params, (loss_first, loss_last) = train_head(
            config, kind, int(s), feats, rows, steps=_STEPS.value, batch=_BATCH.value,
            lr=_LR.value)
        apply = jax.jit(lambda p, *x: head.apply({"params": p}, *x))
        after = score(tasks, feats, lambda r: np.asarray(
            apply(params, feats.tokens[r], feats.mask[r], feats.layers[r])))
        runs[key] = {"attention": attention, "pooling": kind, "seed": int(s), "eos": _EOS.value,
                     "after": after,
                     "loss_first": loss_first, "loss_last": loss_last,
                     "seconds": round(time.time() - t0, 1), "encode_seconds": encode_s}
        logging.info("%s: %s", key, {k: round(100 * v, 1) for k, v in after.items()
                                     if k in dict(COLUMNS)})
        folder.save(results)


def table(results: dict) -> str:
  runs = results.get("runs", {})
  if not runs:
    return "no runs yet\n"
  def label(r):
    return (("zero-shot " if r["seed"] is None else "") + r["pooling"]
            + eos_suffix(r.get("eos", EOS)))
  arms = []
  for r in runs.values():
    if (r["attention"], label(r)) not in arms:
      arms.append((r["attention"], label(r)))
  columns = [(k, l) for k, l in COLUMNS if all(k in r["after"] for r in runs.values())]
  lines = ["| attention | pooling | " + " | ".join(l for _, l in columns) + " | mean |",
           "|---|---|" + "---|" * (len(columns) + 1)]
  for attention, name in arms:
    mine = [r for r in runs.values() if r["attention"] == attention and label(r) == name]
    cells = [percent_mean_sd([r["after"][k] for r in mine]) for k, _ in columns]
    cells.append(percent_mean_sd([np.mean([r["after"][k] for k, _ in columns]) for r in mine]))
    lines.append(f"| {attention} | {name} | " + " | ".join(cells) + " |")
  encode = {r["attention"] + eos_suffix(r.get("eos", EOS)): r["encode_seconds"]
            for r in runs.values()}
  train = sum(r["seconds"] for r in runs.values())
  seeds = sorted({r["seed"] for r in runs.values() if r["seed"] is not None})
  lines += ["", f"x100; mean ± sd over seeds {', '.join(map(str, seeds))} "
            f"(zero-shot rows: no training). Encoding "
            + ", ".join(f"{a} {s / 60:.1f} min" for a, s in encode.items())
            + f"; head training and scoring {train / 60:.1f} min in all."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run_all)


if __name__ == "__main__":
  app.run(main)
