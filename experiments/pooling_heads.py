"""What the pooling studies share (experiments/pooling_study.py and
experiments/pooling_tuned.py): the frozen decoder's states of every text, encoded once
per attention mode, a pooling head trained on those states, and its scores. No flags
here: each study defines its own."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import numpy as np

EOS = "<|endoftext|>"             # appended to every text unless a study says otherwise


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


def encode_texts(config, texts: list[str], *, seq_len: int, eos: str = EOS,
                 batch: int = 64) -> Features:
  """One pass of the frozen decoder over `texts` (each truncated to seq_len - 1 tokens,
  then the token `eos`; with eos='' to seq_len tokens), shortest first, in batches of
  equal padded length."""
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
  tok = Tokenizer(folder.tokenizer, seq_len - 1 if eos else seq_len)
  vocab = tokenizers.Tokenizer.from_file(folder.tokenizer)
  eos_id = vocab.token_to_id(eos) if eos else -1
  if eos_id is None:
    raise SystemExit(f"error: --eos={eos!r} is not a token of {folder.tokenizer}")
  encoder = DecoderEncoder(cfg)

  @jax.jit
  def run(p, ids, mask):
    states = encoder.apply({"params": p}, ids, mask, deterministic=True)
    last = jnp.stack([last_token_pool(h, mask) for h in states[1:]], axis=1)
    return states[-1].astype(jnp.float32), last.astype(jnp.float32)

  n, width, seq = len(texts), cfg.hidden_size, seq_len
  if eos_id >= 0:
    enc = tok.encode(texts, pad_to=seq - 1)
    ids = np.concatenate([enc["input_ids"], np.full((n, 1), tok.pad_id, np.int32)], 1)
    masks = np.concatenate([enc["attention_mask"], np.zeros((n, 1), np.int32)], 1)
    ends = masks.sum(1)
    ids[np.arange(n), ends], masks[np.arange(n), ends] = eos_id, 1
  else:                                # eos='': the text's own last token
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


def train_head(config, kind: str, seed: int, feats: Features, pairs, *, steps: int,
               batch: int, lr: float) -> tuple:
  """(head, params, (mean loss of the first tenth of the steps, of the last tenth))
  after `steps` of InfoNCE (batches of `batch` pairs, AdamW at peak `lr`, warmup a
  tenth, cosine) on `pairs` (rows of feats: [n, 2])."""
  import flax.linen as nn
  import jax
  import optax
  from jaxembed.losses.contrastive import info_nce
  head = make_head(kind, feats.tokens.shape[-1], feats.layers.shape[1],
                   config.model.pool_heads, config.model.pool_latents)
  rng = np.random.default_rng(seed)
  b = batch
  x = lambda r: (feats.tokens[r], feats.mask[r], feats.layers[r])
  params = nn.meta.unbox(head.init(jax.random.key(seed), *x(pairs[:2, 0]))["params"])
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps),
                   weight_decay=0.01)
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
  for i in range(steps):
    if len(order) < b:
      order = np.concatenate([order, rng.permutation(len(pairs))])
    rows, order = pairs[order[:b]], order[b:]
    params, opt, value = step(params, opt, x(rows[:, 0]), x(rows[:, 1]))
    losses.append(value)
    if i % 100 == 0 or i == steps - 1:
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


def study_data(config, train_pairs: int):
  """(the training pairs (anchor, positive) — a fixed sample of `train_pairs` from
  WordNet's training split, the same for every arm — and the evaluation tasks)."""
  from jaxembed.data import builders, pipeline
  from jaxembed.train import inputs
  d = config.data
  wordnet = builders.wordnet_pairs(wordnet_dir=d.wordnet_dir, tfds_dir=d.tfds_dir,
                                   holdout_fraction=d.holdout_fraction, seed=d.split_seed,
                                   pair_kinds=tuple(d.pair_kinds))
  source = wordnet.as_data_source("train")
  flat = pipeline.text_fields(source, ("anchor", "positive"))
  all_pairs = list(zip(flat[0::2], flat[1::2]))
  n = min(train_pairs, len(all_pairs))
  pick = np.random.default_rng(0).choice(len(all_pairs), n, replace=False)
  pairs = [all_pairs[i] for i in sorted(pick)]
  tasks = inputs.build_eval_tasks(config, wordnet, training_sources=[source])
  return pairs, tasks
