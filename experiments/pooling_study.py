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

import dataclasses
import functools
import logging
import os
import time

import numpy as np
from absl import app, flags

from experiments.results_io import check_settings, percent_mean_sd, run_or_table

EOS = "<|endoftext|>"             # appended to every text unless --eos says otherwise

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


@dataclasses.dataclass
class Features:
  """The frozen decoder's states of `texts`: the last layer's tokens [n, T, W] (mask
  [n, T]) and every layer's last-token state [n, L, W]."""
  texts: list
  tokens: np.ndarray
  mask: np.ndarray
  layers: np.ndarray

  @functools.cached_property
  def _index(self) -> dict:
    return {t: i for i, t in enumerate(self.texts)}

  def rows(self, texts):
    return np.asarray([self._index[t] for t in texts])


def encode_texts(config, texts: list[str], batch: int = 64) -> Features:
  """One pass of the frozen decoder over `texts` (each truncated to seq_len - 1 tokens,
  then --eos; with --eos='' to seq_len tokens), shortest first, in batches of equal
  padded length."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import tokenizers
  from jaxembed.data.tokenizer import Tokenizer
  from jaxembed.models import build
  from jaxembed.models.decoder import DecoderEncoder
  from jaxembed.models.loading import load_encoder_weights, read_model_folder
  from jaxembed.models.pooling import last_token_pool
  folder = read_model_folder(config.model.path)
  cfg = build.text_encoder_config(config, folder)
  if config.model.init == "random":
    model = build.build_model(config, cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), *model.example_inputs())["params"])
    params = params["encoder"]
  else:
    params = load_encoder_weights(folder.weights, cfg)["encoder"]
  tok = Tokenizer(folder.tokenizer, _SEQ.value - 1 if _EOS.value else _SEQ.value)
  vocab = tokenizers.Tokenizer.from_file(folder.tokenizer)
  eos = vocab.token_to_id(_EOS.value) if _EOS.value else -1
  if eos is None:
    raise SystemExit(f"error: --eos={_EOS.value!r} is not a token of {folder.tokenizer}")
  encoder = DecoderEncoder(cfg)

  @jax.jit
  def run(p, ids, mask):
    states = encoder.apply({"params": p}, ids, mask, deterministic=True)
    last = jnp.stack([last_token_pool(h, mask) for h in states[1:]], axis=1)
    return states[-1].astype(jnp.float32), last.astype(jnp.float32)

  n, width, seq = len(texts), cfg.hidden_size, _SEQ.value
  if eos >= 0:
    enc = tok.encode(texts, pad_to=seq - 1)
    ids = np.concatenate([enc["input_ids"], np.full((n, 1), tok.pad_id, np.int32)], 1)
    masks = np.concatenate([enc["attention_mask"], np.zeros((n, 1), np.int32)], 1)
    ends = masks.sum(1)
    ids[np.arange(n), ends], masks[np.arange(n), ends] = eos, 1
  else:                                # --eos='': the text's own last token
    enc = tok.encode(texts, pad_to=seq)
    ids, masks = enc["input_ids"], enc["attention_mask"]
  ends = masks.sum(1) - 1              # the last kept position
  tokens = np.zeros((n, seq, width), np.float32)
  layers = np.zeros((n, cfg.num_layers, width), np.float32)
  # Shortest first, each batch cut to its longest text rounded up to 16 tokens (right
  # padding: the states of the kept positions do not depend on the cut).
  order = np.argsort(ends, kind="stable")
  start = time.time()
  for k, lo in enumerate(range(0, n, batch)):
    rows = order[lo:lo + batch]
    length = min(seq, max(16, -(-int(ends[rows].max() + 1) // 16) * 16))   # ends: 0-based
    b_ids, b_mask = ids[rows, :length], masks[rows, :length]
    pad = batch - len(rows)           # one shape per length: pad the last batch
    if pad:
      b_ids, b_mask = np.pad(b_ids, ((0, pad), (0, 0))), np.pad(b_mask, ((0, pad), (0, 0)))
    t, l = run(params, b_ids, b_mask)
    tokens[rows, :length] = np.asarray(t)[:len(rows)]
    layers[rows] = np.asarray(l)[:len(rows)]
    if k % 20 == 0:
      logging.info("encoded %d/%d texts (%s attention), %.0f texts/s",
                   lo + len(rows), n, cfg.attention, (lo + len(rows)) / (time.time() - start))
  tokens *= masks[..., None]           # padded positions: zeros, whatever the model gave
  return Features(list(texts), tokens, masks, layers)


def make_head(kind: str, width: int, num_layers: int, heads: int, latents: int):
  import flax.linen as nn
  import jax.numpy as jnp
  from jaxembed.models.pooling import FUNCTIONS, LatentAttentionPool, MultiLayerPool

  class Head(nn.Module):
    """The pooler on the cached states, then a linear map (identity at the start)."""

    @nn.compact
    def __call__(self, tokens, mask, layers):
      if kind == "multilayer":
        states = (None,) + tuple(layers[:, i:i + 1] for i in range(num_layers))
        ones = jnp.ones(layers.shape[:1] + (1,), jnp.int32)
        x = MultiLayerPool(heads, name="multilayer")(states, ones, (num_layers,),
                                                     num_layers)[:, 0]
      elif kind == "latent":
        x = LatentAttentionPool(heads, latents, name="latent")(tokens, mask)
      else:
        x = FUNCTIONS[kind](tokens, mask)
      return nn.Dense(width, kernel_init=lambda k, s, d: jnp.eye(*s, dtype=d),
                      name="linear")(x)

  return Head()


def train_head(config, kind: str, seed: int, feats: Features, pairs) -> tuple:
  """(head, params, (mean loss of the first tenth of the steps, of the last tenth))
  after --steps of InfoNCE on `pairs` (rows of feats: [n, 2])."""
  import flax.linen as nn
  import jax
  import optax
  from jaxembed.losses.contrastive import info_nce
  head = make_head(kind, feats.tokens.shape[-1], feats.layers.shape[1],
                   config.model.pool_heads, config.model.pool_latents)
  rng = np.random.default_rng(seed)
  b = _BATCH.value
  x = lambda r: (feats.tokens[r], feats.mask[r], feats.layers[r])
  params = nn.meta.unbox(head.init(jax.random.key(seed), *x(pairs[:2, 0]))["params"])
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, _LR.value, _STEPS.value // 10,
                                                      _STEPS.value), weight_decay=0.01)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, a, p):
    def loss(params):
      return info_nce(head.apply({"params": params}, *a), head.apply({"params": params}, *p),
                      scale=20.0)
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  order, losses = np.zeros(0, int), []
  for i in range(_STEPS.value):
    if len(order) < b:
      order = np.concatenate([order, rng.permutation(len(pairs))])
    batch, order = pairs[order[:b]], order[b:]
    params, opt, value = step(params, opt, x(batch[:, 0]), x(batch[:, 1]))
    losses.append(value)
    if i % 100 == 0 or i == _STEPS.value - 1:
      logging.info("%s seed %d step %d loss %.4f", kind, seed, i, float(value))
  losses = [float(v) for v in losses]
  tenth = max(1, len(losses) // 10)     # the first and last tenth's mean loss
  return head, params, (float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:])))


def score(tasks, feats: Features, embed) -> dict:
  """{metric: value} of the vectors `embed(rows)` on every evaluation task."""
  from jaxembed.evals.grid import evaluate_grid
  def encode_all(texts):
    rows = feats.rows(texts)
    return np.concatenate([embed(rows[i:i + 256]) for i in range(0, len(rows), 256)])[:, None]
  row = evaluate_grid(encode_all, tasks, layers=[1], dims=[feats.tokens.shape[-1]])[0]
  return {k: float(v) for k, v in row.items() if k not in ("layer", "dim")}


def study_data(config):
  """(the training pairs (anchor, positive) — a fixed sample of WordNet's training
  split, the same for every arm — and the evaluation tasks)."""
  from jaxembed.data import builders, pipeline
  from jaxembed.train import inputs
  d = config.data
  wordnet = builders.wordnet_pairs(wordnet_dir=d.wordnet_dir, tfds_dir=d.tfds_dir,
                                   holdout_fraction=d.holdout_fraction, seed=d.split_seed,
                                   pair_kinds=tuple(d.pair_kinds))
  source = wordnet.as_data_source("train")
  flat = pipeline.text_fields(source, ("anchor", "positive"))
  all_pairs = list(zip(flat[0::2], flat[1::2]))
  n = min(_PAIRS.value, len(all_pairs))
  pick = np.random.default_rng(0).choice(len(all_pairs), n, replace=False)
  pairs = [all_pairs[i] for i in sorted(pick)]
  tasks = inputs.build_eval_tasks(config, wordnet, training_sources=[source])
  return pairs, tasks


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
    pairs, tasks = study_data(config)
    texts = list(dict.fromkeys([t for p in pairs for t in p] + [
        t for task in tasks for t in task.texts]))
    logging.info("%s: %d training pairs, %d texts to encode", attention, len(pairs), len(texts))
    feats = encode_texts(config, texts)
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
        head, params, (loss_first, loss_last) = train_head(config, kind, int(s), feats, rows)
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
