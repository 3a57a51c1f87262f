r"""Pooling and attention on a frozen decoder LLM with every head's learning rate tuned
on dev, by the evidence protocol (dev halves for the choice, test halves and fresh
seeds for the report, paired bootstrap intervals over seeds and queries, verdicts by
the rule of jaxembed/evals/stats.py). It redoes experiments/pooling_study.py, whose
last-token and multi-layer heads sat at chance at the one learning rate they had.

The claims, stated before the runs, each "b above a" with no effect size (only the
abstracts were available offline):
  NV-Embed (Lee et al. 2024): latent-attention pooling > mean pooling > last token
  Tang & Yang 2024: multi-layer trainable pooling > the existing poolers (here: > mean),
    and bidirectional attention with a trainable pooler > causal (here: the latent head)

  python -m experiments.pooling_tuned --out=runs/pooling_tuned --stage=sweep --attention=causal
  python -m experiments.pooling_tuned --out=runs/pooling_tuned --stage=sweep --attention=bidirectional
  python -m experiments.pooling_tuned --out=runs/pooling_tuned --stage=test

SmolLM2-135M-Instruct (configs/smollm2_pooling.py), frozen; every text encoded once per
attention mode (up to 31 tokens plus <|endoftext|>; cached under <out>/features/, float16)
keeping the last layer's token states and each layer's last-token state, as in
pooling_study.py. Each head (last token, mean, latent attention with 64 latents,
multi-layer pooling over the 30 layers' last-token states; then a linear map, identity at
the start) trains --steps of InfoNCE (scale 20, in-batch negatives) on a fixed sample of
--train_pairs WordNet training pairs, batch --batch, AdamW with a tenth warmup and cosine.

sweep: per attention mode and head, one seed (--sweep_seed) at every --lrs; each scored
on the dev halves (eval.split=dev) of WordNet, man pages and docstrings, MRR@10. The
chosen rate is the one with the highest mean of the three dev scores.
test: per attention mode and head, --seeds (not the sweep's) at the chosen rate, scored
per query on the test halves; the untrained last-token and mean vectors too
('zero-shot').

Writes <out>/results.json and <out>/table.md (made from results.json alone:
`--table_only`); finished sweeps and runs are kept.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
from absl import app, flags

from experiments.pooling_heads import EOS, Features, encode_texts, study_data, train_head
from experiments.results_io import run_or_table
from experiments.study_io import SET_NAMES, half_tasks, machine, reciprocal_ranks

POOLINGS = ("last_token", "mean", "latent", "multilayer")
ZERO_SHOT = ("last_token", "mean")
# (b, a): the claims above, within one attention mode unless the arm names one.
COMPARISONS = (("causal/latent", "causal/mean"), ("bidirectional/latent", "bidirectional/mean"),
               ("causal/mean", "causal/last_token"),
               ("bidirectional/mean", "bidirectional/last_token"),
               ("causal/multilayer", "causal/mean"),
               ("bidirectional/multilayer", "bidirectional/mean"),
               ("bidirectional/latent", "causal/latent"))

_OUT = flags.DEFINE_string("out", "runs/pooling_tuned", "where features and results go")
_STAGE = flags.DEFINE_enum("stage", "sweep", ["sweep", "test"], "what to run")
_ATTENTION = flags.DEFINE_list("attention", ["causal", "bidirectional"], "attention modes")
_POOLING = flags.DEFINE_list("pooling", list(POOLINGS), "heads")
_LRS = flags.DEFINE_list("lrs", ["3e-4", "1e-3", "3e-3", "1e-2"], "learning rates swept")
_SWEEP_SEED = flags.DEFINE_integer("sweep_seed", 0, "the sweep's seed")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "the test stage's seeds")
_PAIRS = flags.DEFINE_integer("train_pairs", 4096, "WordNet training pairs (a fixed sample)")
_STEPS = flags.DEFINE_integer("steps", 200, "training steps of each head")
_BATCH = flags.DEFINE_integer("batch", 32, "pairs per step")
_SEQ = flags.DEFINE_integer("seq_len", 32, "tokens per text, end-of-text token included")
_SMOKE = flags.DEFINE_bool("smoke", False, "a tiny random decoder, 100 queries a set (tests)")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")


def study_config(attention: str):
  from jaxembed.configs import smollm2_pooling
  return smollm2_pooling.get_config(f"attention={attention}"
                                    + (",smoke" if _SMOKE.value else ""))


def halves(config) -> dict:
  """{'dev': {set: task}, 'test': {set: task}}: the retrieval sets split by the stored
  dev/test halves, every query (a smoke run: the first 100 of each)."""
  first = 100 if _SMOKE.value else None
  return {h: half_tasks(h, config.data.tfds_dir, first) for h in ("dev", "test")}


def features(config, attention: str, texts: list[str]) -> tuple[Features, float]:
  """The frozen decoder's states of `texts` (from <out>/features/ when an earlier
  command encoded them; saved there otherwise), and the seconds encoding took."""
  path = os.path.join(_OUT.value, "features", f"{attention}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      if list(z["texts"]) == texts:
        return Features(texts, z["tokens"].astype(np.float32), z["mask"],
                        z["layers"].astype(np.float32)), 0.0
  start = time.time()
  feats = encode_texts(config, texts, seq_len=_SEQ.value, eos=EOS)
  took = round(time.time() - start, 1)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "wb") as f:            # written whole, then renamed
    np.savez(f, texts=np.asarray(texts), tokens=feats.tokens.astype(np.float16),
             mask=feats.mask, layers=feats.layers.astype(np.float16))
  os.replace(path + ".tmp", path)
  return feats, took


def reciprocal_ranks_of(tasks: dict, feats: Features, embed) -> dict:
  """{set: [reciprocal rank at 10 per query]} of the vectors `embed(rows)`, cosine."""
  def vectors(texts):
    rows = feats.rows(texts)
    v = np.concatenate([embed(rows[i:i + 256]) for i in range(0, len(rows), 256)])
    v = v.astype(np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  return {n: [round(float(x), 6) for x in reciprocal_ranks(
      vectors(t.queries) @ vectors(t.corpus).T, t.relevance)] for n, t in tasks.items()}


def chosen_lr(results: dict, arm: str) -> str | None:
  """The swept rate with the highest mean dev MRR@10 over the sets (None: unswept)."""
  sweep = results.get("sweep", {}).get(arm, {})
  if not sweep or any(lr not in sweep for lr in results["lrs"]):
    return None
  return max(results["lrs"], key=lambda lr: np.mean(list(sweep[lr]["dev"].values())))


def run(folder, results: dict) -> None:
  import jax
  from jaxembed.models.pooling import FUNCTIONS
  settings = {"train_pairs": _PAIRS.value, "steps": _STEPS.value, "batch": _BATCH.value,
              "seq_len": _SEQ.value, "smoke": _SMOKE.value, "sweep_seed": _SWEEP_SEED.value,
              "lrs": list(_LRS.value)}
  if (results.get("sweep") or results.get("rr")) and any(
      results.get(k) != v for k, v in settings.items()):
    raise SystemExit(f"error: {folder.path} holds runs made with "
                     f"{ {k: results.get(k) for k in settings} }, not {settings}: "
                     "use another --out")
  results.update(settings)
  results.update({"k": 10, "machine": machine()})
  sweep, rr = results.setdefault("sweep", {}), results.setdefault("rr", {})
  wall = results.setdefault("wall_s", {})
  for attention in _ATTENTION.value:
    config = study_config(attention)
    pairs, _ = study_data(config, _PAIRS.value)
    sets = halves(config)
    results["queries"] = {h: {n: len(t.queries) for n, t in s.items()}
                          for h, s in sets.items()}
    texts = list(dict.fromkeys([t for p in pairs for t in p] + [
        t for s in sets.values() for task in s.values() for t in task.texts]))
    todo = [p for p in _POOLING.value
            if (_STAGE.value == "sweep" and any(
                lr not in sweep.get(f"{attention}/{p}", {}) for lr in _LRS.value))
            or (_STAGE.value == "test" and any(
                s not in rr.get(f"{attention}/{p}", {}) for s in _SEEDS.value))]
    if _STAGE.value == "test":
      todo += [f"zero_shot_{k}" for k in ZERO_SHOT if f"{attention}/zero_shot_{k}" not in rr]
    if not todo:
      continue
    logging.info("%s: %d training pairs, %d texts", attention, len(pairs), len(texts))
    feats, took = features(config, attention, texts)
    if took:
      wall[f"encode_{attention}"] = took
    rows = np.stack([feats.rows([a for a, _ in pairs]), feats.rows([p for _, p in pairs])], 1)

    def trained(kind, seed, lr):
      start = time.time()
      head, params, losses = train_head(config, kind, seed, feats, rows, steps=_STEPS.value,
                                        batch=_BATCH.value, lr=float(lr))
      apply = jax.jit(lambda p, *x: head.apply({"params": p}, *x))
      embed = lambda r: np.asarray(apply(params, feats.tokens[r], feats.mask[r],
                                         feats.layers[r]))
      return embed, losses, time.time() - start

    if _STAGE.value == "test":
      for kind in ZERO_SHOT:
        arm = f"{attention}/zero_shot_{kind}"
        if arm not in rr:
          fn = jax.jit(FUNCTIONS[kind])
          rr[arm] = {"-": reciprocal_ranks_of(sets["test"], feats, lambda r: np.asarray(
              fn(feats.tokens[r], feats.mask[r])))}
          folder.save(results)
    for kind in _POOLING.value:
      arm = f"{attention}/{kind}"
      if _STAGE.value == "sweep":
        for lr in _LRS.value:
          if lr in sweep.get(arm, {}):
            continue
          embed, (first, last), took = trained(kind, _SWEEP_SEED.value, lr)
          dev = reciprocal_ranks_of(sets["dev"], feats, embed)
          sweep.setdefault(arm, {})[lr] = {
              "dev": {n: float(np.mean(v)) for n, v in dev.items()},
              "loss_first": first, "loss_last": last, "seconds": round(took, 1)}
          logging.info("%s lr %s: dev %s, loss %.3f -> %.3f", arm, lr,
                       {n: round(100 * float(np.mean(v)), 1) for n, v in dev.items()},
                       first, last)
          folder.save(results)
      else:
        lr = chosen_lr(results, arm)
        if lr is None:
          raise SystemExit(f"error: {arm} has no finished sweep in {folder.path}: run "
                           "--stage=sweep first")
        for seed in _SEEDS.value:
          if seed in rr.get(arm, {}):
            continue
          if int(seed) == _SWEEP_SEED.value:
            raise SystemExit(f"error: --seeds: {seed} is the sweep's seed; the test "
                             "stage takes seeds that did not choose anything")
          embed, (first, last), took = trained(kind, int(seed), lr)
          rr.setdefault(arm, {})[seed] = reciprocal_ranks_of(sets["test"], feats, embed)
          results.setdefault("test_loss", {}).setdefault(arm, {})[seed] = [first, last]
          wall[f"{arm}_s{seed}"] = round(took, 1)
          folder.save(results)
  folder.save(results)


def head_label(head: str) -> str:
  """'zero_shot_last_token' -> 'zero-shot last token'."""
  return head.replace("zero_shot_", "zero-shot ").replace("_", " ")


def table(results: dict) -> str:
  from jaxembed.evals import stats
  sweep, rr = results.get("sweep", {}), results.get("rr", {})
  chance = math.log(results["batch"])
  lines = [f"Learning-rate sweep (seed {results['sweep_seed']}, dev halves, MRR@10 x100, "
           f"mean of the three sets; final loss: the last tenth's mean, chance = ln "
           f"{results['batch']} = {chance:.2f}); {results['machine']}.", "",
           "| attention | head | " + " | ".join(f"lr {lr}" for lr in results["lrs"])
           + " | chosen |", "|---|---|" + "---|" * (len(results["lrs"]) + 1)]
  for arm, by_lr in sweep.items():
    cells = []
    for lr in results["lrs"]:
      r = by_lr.get(lr)
      cells.append("–" if r is None else
                   f"{100 * np.mean(list(r['dev'].values())):.1f} (loss {r['loss_last']:.2f})")
    attention, head = arm.split("/")
    lines.append(f"| {attention} | {head_label(head)} | " + " | ".join(cells)
                 + f" | {chosen_lr(results, arm) or '–'} |")
  if rr:
    seeds = sorted({s for arm, by in rr.items() for s in by if s != "-"}, key=int)
    sets = list(next(iter(next(iter(rr.values())).values())))
    done = lambda arm: arm in rr and all(s in rr[arm] for s in seeds)
    lines += ["", f"Test halves (every test query), MRR@{results['k']} x100, mean ± sample "
              f"sd over seeds {', '.join(seeds)} at the chosen rate (zero-shot: no "
              "training, one model):", "",
              "| attention | head | lr | " + " | ".join(
                  f"{SET_NAMES[n]} ({results['queries']['test'][n]})" for n in sets)
              + " | final loss |", "|---|---|---|" + "---|" * (len(sets) + 1)]
    for arm in rr:
      keys = ["-"] if "zero_shot" in arm else seeds
      if not all(k in rr[arm] for k in keys):
        continue
      cells = []
      for n in sets:
        means = 100 * np.array([np.mean(rr[arm][k][n]) for k in keys])
        cells.append(f"{means.mean():.1f}" + (f" ± {stats.sample_sd(means):.1f}"
                                             if len(keys) > 1 else ""))
      loss = results.get("test_loss", {}).get(arm)
      attention, head = arm.split("/")
      lines.append(f"| {attention} | {head_label(head)} | "
                   f"{chosen_lr(results, arm) or '–'} | " + " | ".join(cells) + " | "
                   + (f"{np.mean([v[1] for v in loss.values()]):.2f}" if loss else "–")
                   + " |")
    lines += ["", "Paired differences b − a, MRR@10 x100 (95% bootstrap interval over "
              "seeds, then queries; the claim's direction: b > a, no effect size; rule: "
              "jaxembed/evals/stats.py):", "",
              "| b − a, set | claim | Δ | 95% interval | verdict |", "|---|---|---|---|---|"]
    for b, a in COMPARISONS:
      if not (done(a) and done(b)):
        continue
      for n in sets:
        per = lambda arm: np.array([rr[arm][s][n] for s in seeds])
        interval = stats.paired_interval(per(a), per(b), resamples=2000)
        lines.append(stats.verdict_row(f"{b} − {a}, {SET_NAMES[n]}", interval, +1,
                                       scale=100))
  wall = results.get("wall_s", {})
  swept = sum(r["seconds"] for by in sweep.values() for r in by.values())
  lines += ["", "Wall time: " + ", ".join(
      f"{k} {v / 60:.1f} min" for k, v in sorted(wall.items()) if k.startswith("encode"))
      + f"; sweep {swept / 60:.1f} min; test heads "
      f"{sum(v for k, v in wall.items() if not k.startswith('encode')) / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  run_or_table(_OUT.value, _TABLE_ONLY.value, table, run)


if __name__ == "__main__":
  app.run(main)
