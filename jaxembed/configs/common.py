"""Pieces shared by every config: argument parsing and the defaults of each section."""

from __future__ import annotations

import ml_collections

from jaxembed import defaults


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'smoke,variant=starbucks' -> ConfigDict(smoke=True, variant='starbucks').

  Bare words are booleans; keys must be among `defaults` (so a typo fails loudly).
  """
  out = ml_collections.ConfigDict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, eq, value = part.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not known; valid: {sorted(defaults)}")
    if not eq:
      out[key] = True
    else:
      out[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return out


def override(c: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
  """`c` with each dotted field of `fields` set ({"train.batch_size": 64, ...})."""
  for key, value in fields.items():
    *path, leaf = key.split(".")
    node = c
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with defaults (`jaxembed.defaults`); paper configs
  override a few."""
  return defaults.base_config()


def pair_loss_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """The pair loss alone on all-MiniLM-L6-v2 (InfoNCE, scale 20, in-batch negatives,
  WordNet pairs, every (layer, dim) cell): the base of the studies that compare
  objectives, heads or exits, and the ablation's `pairs` arm. The matmul dtype the
  hardware runs fastest (model.dtype=auto) and training rows packed to 32 tokens;
  `tiny`: the smoke model (float32) instead."""
  c = base_config()
  if tiny:
    return smoke(c)
  # The pairs are short (25 real tokens a pair in 64 padded slots): packed into rows of
  # 32 tokens, a multiple of 16 rows (two shapes in practice); benchmarks/packing.py
  # measures the step against padded rows.
  c.data.pack_length = 32
  c.data.pack_granule = 16
  return c


def study_scale(c: ml_collections.ConfigDict, *, accelerator: bool,
                smoke: bool) -> ml_collections.ConfigDict:
  """The scale of a MiniLM study's arm: on 2 CPU cores, 500 queries per retrieval set
  and no classification/clustering sets (each arm then fits the study's budget); with
  `accelerator`, 2,000 steps of 256 pairs and the full evaluation sets; smoke: as is."""
  if accelerator:
    c.train.steps = 2000
    c.train.batch_size = 256
    c.optim.warmup_steps = 100
    c.train.checkpoint_every = 500
    c.eval.ood_queries = 0
  elif not smoke:
    c.eval.wordnet_queries = c.eval.ood_queries = 500
    c.eval.polarity = c.eval.newsgroup = False
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny and fast (seconds): a 2-layer random BERT on the MiniLM vocabulary, a few
  hundred WordNet pairs and small evaluation sets. Used by the tests."""
  c.model.init = "random"
  c.model.dtype = "float32"       # the same numbers on every machine
  c.model.bert_overrides = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64))
  c.data.max_train_examples = 512
  c.data.seq_len = 16
  c.loss.matryoshka.layers = (1, 2)
  c.loss.matryoshka.dims = (8, 16, 32)
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 2
  c.train.steps = 24
  c.train.batch_size = 16
  c.train.log_every = 2
  c.train.checkpoint_every = 8
  c.eval.layers = (1, 2)
  c.eval.dims = (8, 16, 32)
  c.eval.batch_size = 32
  c.eval.max_length = 32
  c.eval.wordnet_queries = 48
  c.eval.lee = False
  c.eval.simlex = True
  c.eval.wordsim = False
  c.eval.polarity = False
  c.eval.newsgroup = False
  c.eval.ood = ()
  return c
