"""A multi-vector (late-interaction, ColBERT) embedder: one vector per token.

`MultiVectorEmbedder` runs a text encoder once and, at each exit layer, maps every
token's hidden state through a linear projection without bias (width `dim`, 128 by
default) and normalises it. What it returns for a batch is, per text, the token
vectors [layers, T, dim] and a mask [T] of the tokens that count in MaxSim
(`losses/late_interaction.py`).

The texts arrive tokenized as for any encoder ([CLS] ... [SEP], padded); the module
then does what PyLate's ColBERT does at tokenization, so that training, `encode` and a
PyLate export see the same inputs:

* a marker token is inserted after [CLS]: `query_prefix_id` for queries,
  `document_prefix_id` for documents (BERT's [unused0] / [unused1] by default: tokens
  in the vocabulary, no new embedding);
* queries are cut or padded to `query_length` tokens and, with `expand_queries`
  (ColBERT's query augmentation), their padding becomes [MASK] tokens whose vectors
  count (attended to by the other tokens only if `attend_to_expansion`);
* documents drop their padding and, with `skip_ids` (punctuation), those tokens from
  the mask; their vectors are still computed.

Each layer has its own projection ([layers, hidden, dim]), so every layer is an exit
and a Matryoshka (layer, dim) cell of token vectors comes from the same pass.

It implements the embedder interface of `models/embedder.py` with token matrices in
place of pooled vectors: `encode_pairs` gives ((vectors, mask) of the anchors,
of the positives[, of the negatives]), vectors [batch, exits, T, dim] (negatives
[batch, k, exits, T, dim], masks [batch, k, T]).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import ConfigError
from jaxembed.models.embedder import make_encoder, text_inputs

PROJECTION = "projection"


def l2_normalize(x, eps: float = 1e-12):
  """x / max(||x||, eps) over the last axis."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)), eps)


def maxsim(q, q_mask, d, d_mask):
  """MaxSim scores [nq, nd] of queries q [nq, Tq, D] against documents d [nd, Td, D]
  (masks [n, T], 1 = counted)."""
  sim = jnp.einsum("itk,jsk->ijts", q, d)
  sim = jnp.where(d_mask[None, :, None, :] > 0, sim, -jnp.inf)
  best = jnp.max(sim, axis=-1)
  best = jnp.where(jnp.isfinite(best), best, 0.0)       # a document without tokens
  return jnp.sum(best * q_mask[:, None, :].astype(best.dtype), axis=-1)


class MultiVectorEmbedder(nn.Module):
  encoder_config: Any
  dim: int = 128
  depth: int = 0                         # layers computed (0: all), see up_to
  query_prefix_id: int = 1               # BERT's [unused0]
  document_prefix_id: int = 2            # BERT's [unused1]
  mask_id: int = 103                     # [MASK]
  query_length: int = 32
  expand_queries: bool = True
  attend_to_expansion: bool = False
  skip_ids: tuple[int, ...] = ()
  # Fewer vectors per text (CRISP, Veneroso et al. 2025, and its baselines): 'none',
  # 'kmeans' (k-means of the text's counted tokens into query_vectors / doc_vectors
  # centroids, in the forward pass: trained through, or applied after training),
  # 'tail' (its last k counted tokens) or 'spacing' (k counted tokens evenly spaced).
  query_reduce: str = "none"
  query_vectors: int = 0
  doc_reduce: str = "none"
  doc_vectors: int = 0
  kmeans_iterations: int = 5

  query_modality = "text"
  symmetric = False                      # queries and documents are marked differently
  supports_hard_negatives = True
  supports_grad_cache = False
  supports_packing = False
  supports_early_exit = True
  centred_exits = False
  exit_components = 0
  multivector = True
  head = False                   # no Dense chain / LayerNorm after pooling
  head_norm = False
  pretrained_paths = (("encoder",),)

  @property
  def exits(self) -> tuple[int, ...]:
    """Every layer is an exit (1-based), so that a (layer, dim) cell indexes layer - 1
    as for the single-vector embedder; the loss reads the cells it trains."""
    return tuple(range(1, (self.depth or self.encoder_config.num_layers) + 1))

  @property
  def text_config(self):
    return self.encoder_config

  @property
  def output_layers(self) -> int:
    return len(self.exits)

  @property
  def output_width(self) -> int:
    return self.dim

  def up_to(self, depth: int) -> "MultiVectorEmbedder":
    """Layers 1..depth, computing only the first `depth` blocks (same parameters)."""
    return self.clone(depth=depth)

  def example_inputs(self) -> tuple:
    x = text_inputs()
    return x["input_ids"], x["attention_mask"]

  def prepare(self, input_ids, attention_mask, is_query: bool):
    """(ids, attention mask, counted mask) after the marker and, for queries, the
    expansion: what PyLate's ColBERT.tokenize gives for the same tokenizer output."""
    b = input_ids.shape[0]
    marker = self.query_prefix_id if is_query else self.document_prefix_id
    ids = jnp.concatenate([input_ids[:, :1], jnp.full((b, 1), marker, input_ids.dtype),
                           input_ids[:, 1:]], axis=1)
    mask = jnp.concatenate([attention_mask[:, :1], jnp.ones((b, 1), attention_mask.dtype),
                            attention_mask[:, 1:]], axis=1)
    if not is_query:
      counted = mask
      for i in self.skip_ids:
        counted = counted * (ids != i).astype(counted.dtype)
      return ids, mask, counted
    t = self.query_length
    if ids.shape[1] > t:    # cut as the tokenizer would: the last kept token is [SEP]
      last = jnp.sum(mask, axis=1) - 1
      sep = jnp.take_along_axis(ids, last[:, None], axis=1)
      ids, mask = ids[:, :t], mask[:, :t]
      long = (last >= t)[:, None] & (jnp.arange(t) == t - 1)[None]
      ids = jnp.where(long, sep, ids)
    elif ids.shape[1] < t:
      pad = t - ids.shape[1]
      ids = jnp.pad(ids, ((0, 0), (0, pad)))
      mask = jnp.pad(mask, ((0, 0), (0, pad)))
    if not self.expand_queries:
      return ids, mask, mask
    ids = jnp.where(mask > 0, ids, self.mask_id)
    counted = jnp.ones_like(mask)
    return ids, (counted if self.attend_to_expansion else mask), counted

  @nn.compact
  def __call__(self, input_ids, attention_mask, *, is_query: bool = False,
               deterministic: bool = True):
    """(vectors [batch, exits, T', dim], counted [batch, T'])."""
    ids, mask, counted = self.prepare(input_ids, attention_mask, is_query)
    hidden = make_encoder(self.encoder_config)(ids, mask, deterministic=deterministic,
                                               depth=max(self.exits))
    kernel = self.param(PROJECTION, nn.with_logical_partitioning(
        nn.initializers.lecun_normal(batch_axis=(0,)), (None, "embed", None)),
        (self.encoder_config.num_layers, self.encoder_config.hidden_size, self.dim),
        jnp.float32)[:len(self.exits)]
    states = jnp.stack([hidden[l] for l in self.exits], axis=1).astype(jnp.float32)
    vectors = l2_normalize(jnp.einsum("bltw,lwd->bltd", states, kernel))
    counted = counted.astype(jnp.float32)
    how, k = (self.query_reduce, self.query_vectors) if is_query else (
        self.doc_reduce, self.doc_vectors)
    return reduce_tokens(vectors, counted, how, k, iterations=self.kmeans_iterations)

  # ------------------------------------------------------------------ interface

  def encode_pairs(self, batch, *, deterministic: bool = True):
    """Queries (anchors) and documents (positives, hard negatives) in two passes: they
    are marked and cut differently."""
    anchors = self(batch["anchor"]["input_ids"], batch["anchor"]["attention_mask"],
                   is_query=True, deterministic=deterministic)
    negatives = batch.get("negatives")
    docs = [batch["positive"]]
    if negatives is not None:
      b, k, t = negatives["input_ids"].shape
      docs.append({key: v.reshape(b * k, t) for key, v in negatives.items()})
    vectors, counted = self(jnp.concatenate([d["input_ids"] for d in docs]),
                            jnp.concatenate([d["attention_mask"] for d in docs]),
                            is_query=False, deterministic=deterministic)
    n = batch["anchor"]["input_ids"].shape[0]
    positives = (vectors[:n], counted[:n])
    if negatives is None:
      return anchors, positives
    return anchors, positives, (vectors[n:].reshape(n, k, *vectors.shape[1:]),
                                counted[n:].reshape(n, k, -1))

  def encode_documents(self, inputs, deterministic: bool = True):
    return self(inputs["input_ids"], inputs["attention_mask"], is_query=False,
                deterministic=deterministic)

  def encode_queries(self, inputs, deterministic: bool = True):
    return self(inputs["input_ids"], inputs["attention_mask"], is_query=True,
                deterministic=deterministic)


PUNCTUATION = tuple("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")   # Python's string.punctuation


def special_ids(tokenizer, *, query_prefix: str, document_prefix: str,
                skip_punctuation: bool) -> dict:
  """The token ids MultiVectorEmbedder needs, from a `tokenizers.Tokenizer`: the two
  markers, [MASK] (the query expansion token; else the end-of-text token, as PyLate),
  and the punctuation tokens documents skip (a character the vocabulary lacks maps to
  the unknown token, as transformers' convert_tokens_to_ids does for PyLate)."""
  def must(token, field):
    i = tokenizer.token_to_id(token)
    if i is None:
      raise ConfigError(f"model.multivector.{field}={token!r} is not a token of the "
                        "model's vocabulary; choose one that is (e.g. '[unused0]')")
    return i
  mask = next((tokenizer.token_to_id(t) for t in ("[MASK]", "<mask>", "</s>", "<eos>",
                                                   "<|endoftext|>")
               if tokenizer.token_to_id(t) is not None), None)
  if mask is None:
    raise ConfigError("the model's vocabulary has no [MASK] or end-of-text token to "
                      "expand queries with; set model.multivector.expand_queries=False")
  unk = next((tokenizer.token_to_id(t) for t in ("[UNK]", "<unk>")
              if tokenizer.token_to_id(t) is not None), None)
  skip = ()
  if skip_punctuation:
    found = [tokenizer.token_to_id(p) for p in PUNCTUATION]
    skip = tuple(sorted({unk if i is None else i for i in found} - {None}))
  return dict(query_prefix_id=must(query_prefix, "query_prefix"),
              document_prefix_id=must(document_prefix, "document_prefix"),
              mask_id=mask, skip_ids=skip)


def multivector_fields(model: MultiVectorEmbedder) -> tuple:
  """The fields a saved model records (ModelSpec.multivector), sorted (name, value)."""
  names = ("dim", "query_prefix_id", "document_prefix_id", "mask_id", "query_length",
           "expand_queries", "attend_to_expansion", "skip_ids", "query_reduce",
           "query_vectors", "doc_reduce", "doc_vectors", "kmeans_iterations")
  return tuple(sorted((n, getattr(model, n)) for n in names))


REDUCTIONS = ("none", "kmeans", "tail", "spacing")


def _positions(counted, k: int):
  """[batch, k] indices of k counted tokens evenly spaced over each text (in order;
  counted tokens are contiguous but for skipped punctuation, so the j-th of k is the
  counted token numbered floor(j * n / k)), and [batch, k] whether that slot exists
  (a text with fewer than k counted tokens fills only n slots)."""
  n = jnp.sum(counted, axis=-1).astype(jnp.int32)                 # [batch]
  rank = jnp.cumsum(counted, axis=-1).astype(jnp.int32) - 1        # counted token's number
  j = jnp.arange(k)
  # the j-th of n >= k counted tokens spread evenly; with n < k, the first n slots
  # hold each token once and the rest are masked
  want = jnp.where(n[:, None] >= k, (j[None] * n[:, None]) // k, j[None])   # [batch, k]
  real = (j[None] < n[:, None]).astype(counted.dtype)
  hit = (rank[:, None, :] == want[:, :, None]) & (counted[:, None, :] > 0)
  return jnp.argmax(hit, axis=-1), real


def reduce_tokens(vectors, counted, how: str, k: int, *, iterations: int = 5):
  """Each text's token vectors [batch, layers, T, D] (mask [batch, T]) reduced to k:
  (vectors [batch, layers, k, D], mask [batch, k]); 'none' returns them unchanged.
  k-means starts from the evenly spaced tokens (`_positions`) and runs `iterations`
  Lloyd steps per layer on the cosine (the assignment is not differentiated; the
  centroids, means of their tokens, are, then normalised); a cluster left empty keeps
  its previous centroid. A text with n < k counted tokens has n vectors (the rest of
  its slots masked)."""
  if how == "none" or not k:
    return vectors, counted
  if how not in REDUCTIONS:
    raise ValueError(f"token reduction {how!r}; valid: {list(REDUCTIONS)}")
  if how == "tail":
    n = jnp.sum(counted, axis=-1).astype(jnp.int32)
    rank = jnp.cumsum(counted, axis=-1).astype(jnp.int32) - 1
    want = n[:, None] - k + jnp.arange(k)[None]                     # the last k numbers
    real = (want >= 0).astype(counted.dtype)
    hit = (rank[:, None, :] == want[:, :, None]) & (counted[:, None, :] > 0)
    pos = jnp.argmax(hit, axis=-1)
  else:
    pos, real = _positions(counted, k)
  picked = jnp.take_along_axis(vectors, pos[:, None, :, None], axis=2)   # [b, l, k, D]
  if how != "kmeans":
    return picked, real
  return kmeans_centroids(vectors, counted, picked, real, iterations)


def kmeans_centroids(vectors, counted, init, init_mask, iterations: int):
  """Lloyd's k-means on the cosine, per text and layer: tokens [b, l, T, D] with mask
  [b, T], `iterations` steps from the centroids `init` [b, l, k, D] (its real slots:
  init_mask [b, k]). Each step assigns every counted token to its most similar live
  centroid (no gradient through the choice) and moves each centroid to the mean of its
  tokens (an empty one stays). Returns (normalised centroids, init_mask)."""
  centroids = init
  for _ in range(iterations):
    sim = jnp.einsum("bltd,blkd->bltk", jax.lax.stop_gradient(vectors),
                     jax.lax.stop_gradient(centroids))
    sim = jnp.where(init_mask[:, None, None, :] > 0, sim, -jnp.inf)
    assign = jax.nn.one_hot(jnp.argmax(sim, axis=-1), centroids.shape[2],
                            dtype=vectors.dtype) * counted[:, None, :, None]
    size = jnp.sum(assign, axis=2)                                  # [b, l, k]
    total = jnp.einsum("bltk,bltd->blkd", assign, vectors)
    mean = total / jnp.maximum(size, 1.0)[..., None]
    centroids = jnp.where(size[..., None] > 0, mean, centroids)
  return l2_normalize(centroids), init_mask
