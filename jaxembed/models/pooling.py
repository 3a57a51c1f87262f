"""Pooling of token states into one vector, masked by a pooling mask.

The parameter-free poolers take `hidden` [batch, length, width] and `mask`
[batch, length] (1 for tokens that are pooled) and return [batch, width]; padding may
be on either side. The trainable ones are Linen modules with the same call:

  map            multi-head attention pooling with a learned probe (big_vision's MAP head)
  latent         NV-Embed latent attention: tokens attend to r trainable latents, MLP,
                 then a masked mean
  multilayer     the "Pooling and Attention" paper's multi-layer trainable pooling:
                 learned queries cross-attend over one summary per hidden layer

Instruction masking: the mask given to a pooler may differ from the attention mask
(instruction / prompt tokens are attended to but not pooled); `Pooler` takes both.
An all-zero mask row gives a defined output: zeros for the averaging and max poolers,
position 0 for last_token, and the attention poolers attend to nothing but their own
parameters (see each).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import ConfigError
from jaxembed.models.layers import Linear, layer_norm


def cls_pool(hidden, mask):
  """The first token's state ([CLS] for BERT); assumes right padding, as BERT uses."""
  del mask
  return hidden[:, 0]


def mean_pool(hidden, mask):
  """Average over pooled tokens (sentence-transformers' `pooling_mode_mean_tokens`).

  An all-zero row gives zeros rather than NaN (its count is clamped to 1e-9, as in
  sentence-transformers).
  """
  m = mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(axis=1) / jnp.clip(m.sum(axis=1), 1e-9)


def weighted_mean_pool(hidden, mask):
  """Position-weighted mean (SGPT, Muennighoff 2022): the i-th pooled token (1-based,
  counted over pooled tokens only, so padding side does not matter) has weight i, so
  later tokens, which have seen more of a causal model's input, count more."""
  m = mask.astype(hidden.dtype)
  w = jnp.cumsum(m, axis=1) * m
  return (hidden * w[..., None]).sum(axis=1) / jnp.clip(w.sum(axis=1, keepdims=True), 1e-9)


def max_pool(hidden, mask):
  """Element-wise max over pooled tokens; an all-zero row gives zeros."""
  m = mask.astype(bool)[..., None]
  out = jnp.where(m, hidden, jnp.finfo(hidden.dtype).min).max(axis=1)
  return jnp.where(m.any(axis=1), out, 0.0)


def last_token_pool(hidden, mask):
  """The state of the last pooled token, under left or right padding.

  The index of the last 1 in each mask row is found directly, so the result is right
  whichever side was padded; an all-zero row gives the state at position 0.
  """
  length = mask.shape[1]
  positions = jnp.arange(length)[None, :]
  last = jnp.max(jnp.where(mask.astype(bool), positions, 0), axis=1)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


FUNCTIONS = {
    "cls": cls_pool,
    "mean": mean_pool,
    "weighted_mean": weighted_mean_pool,
    "max": max_pool,
    "last_token": last_token_pool,
}
TRAINABLE = ("map", "latent", "multilayer")
POOLERS = tuple(sorted((*FUNCTIONS, *TRAINABLE)))


def check_pooling(name: str, field: str = "model.pooling") -> str:
  if name not in POOLERS:
    raise ConfigError(f"{field}={name!r} is not a pooling; valid values: {list(POOLERS)}")
  return name


# ------------------------------------------------------------------ trainable poolers

def _linear(features, axes, name, in_dims=1):
  features = features if isinstance(features, tuple) else (features,)
  return Linear(features, axes, in_dims=in_dims, name=name)


def _norm(name):
  return layer_norm(1e-6, name, dtype=None)


class CrossAttention(nn.Module):
  """Multi-head attention of `queries` [B, Q, W] over `context` [B, K, W] (keys masked
  by `key_mask` [B, K] if given), with input and output projections."""
  num_heads: int

  @nn.compact
  def __call__(self, queries, context, key_mask=None):
    width = queries.shape[-1]
    if width % self.num_heads:
      raise ConfigError(f"model.pool_heads={self.num_heads} does not divide the hidden "
                        f"size {width}")
    shape = (self.num_heads, width // self.num_heads)
    q = _linear(shape, ("embed", "heads", "kv"), "query")(queries)
    k = _linear(shape, ("embed", "heads", "kv"), "key")(context)
    v = _linear(shape, ("embed", "heads", "kv"), "value")(context)
    mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return _linear(width, ("heads", "kv", "embed"), "output", in_dims=2)(out)


class MLP(nn.Module):
  ratio: int = 4

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.gelu(_linear(width * self.ratio, ("embed", "mlp"), "fc1")(x), approximate=False)
    return _linear(width, ("mlp", "embed"), "fc2")(h)


class MAPPool(nn.Module):
  """big_vision's MAP head: a learned probe attends over the pooled tokens, then a
  residual MLP on the layer-normed result. An all-zero mask row attends uniformly
  over all positions (the mask is dropped for that row), so the output is finite."""
  num_heads: int = 8

  @nn.compact
  def __call__(self, hidden, mask):
    width = hidden.shape[-1]
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(), (None, "embed")), (1, width))
    m = mask.astype(bool)
    m = jnp.where(m.any(axis=1, keepdims=True), m, True)
    q = jnp.broadcast_to(probe[None], (hidden.shape[0], 1, width)).astype(hidden.dtype)
    x = CrossAttention(self.num_heads, name="attention")(q, hidden, m)
    x = x + MLP(name="mlp")(_norm("norm")(x))
    return x[:, 0]


class LatentAttentionPool(nn.Module):
  """NV-Embed's latent attention: every token (query) attends to `num_latents`
  trainable latents (keys and values), then an MLP, each with a pre-norm and a
  residual as in NV-Embed's released `LatentAttentionModel`, then the masked mean.
  An all-zero mask row gives zeros."""
  num_heads: int = 8
  num_latents: int = 512

  @nn.compact
  def __call__(self, hidden, mask):
    width = hidden.shape[-1]
    latents = self.param("latents", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, "embed")), (self.num_latents, width))
    ctx = jnp.broadcast_to(latents[None], (hidden.shape[0],) + latents.shape)
    x = hidden + CrossAttention(self.num_heads, name="attention")(
        _norm("norm_queries")(hidden), _norm("norm_latents")(ctx.astype(hidden.dtype)))
    x = x + MLP(name="mlp")(_norm("norm_mlp")(x))
    return mean_pool(x, mask)


class MultiLayerPool(nn.Module):
  """Multi-layer trainable pooling (Tang & Yang, 2024, "Pooling and Attention"):
  each hidden layer is summarised by its last pooled token's state (the EOS state the
  paper's causal LLMs end with), a learned per-layer embedding is added, and
  `num_latents` learned queries cross-attend over the layers, then an MLP, then their
  mean. The sub-model "truncated to layer i" attends only over layers 1..i, so every
  (layer, dim) cell of a 2D Matryoshka grid is a real truncated model."""
  num_heads: int = 8
  num_latents: int = 1

  @nn.compact
  def __call__(self, hidden_states, mask, layers, num_layers: int | None = None):
    """`num_layers`: the encoder's depth (default: the states given); fewer states
    than that (an early-exit pass) use the first rows of the layer embedding."""
    summaries = jnp.stack([last_token_pool(h, mask) for h in hidden_states[1:]], axis=1)
    n_layers, width = summaries.shape[1], summaries.shape[2]
    layer_emb = self.param("layer_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (num_layers or n_layers, width))
    layer_emb = layer_emb[:n_layers]
    queries = self.param("queries", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, "embed")), (self.num_latents, width))
    ctx = _norm("norm_layers")(summaries + layer_emb[None].astype(summaries.dtype))
    attend = CrossAttention(self.num_heads, name="attention")
    mlp, norm = MLP(name="mlp"), _norm("norm_mlp")
    q = jnp.broadcast_to(queries[None], (summaries.shape[0],) + queries.shape)
    out = []
    for layer in layers:
      visible = jnp.broadcast_to(jnp.arange(n_layers)[None] < layer,
                                 (summaries.shape[0], n_layers))
      x = attend(q.astype(ctx.dtype), ctx, visible)
      x = x + mlp(norm(x))
      out.append(x.mean(axis=1))
    return jnp.stack(out, axis=1)


class Pooler(nn.Module):
  """Pools the requested layers (1-based) of `hidden_states` (the encoder's tuple,
  index 0 = embeddings) into [batch, len(layers), width].

  `pool_mask` selects the pooled tokens (the attention mask, minus instruction
  tokens); the per-layer poolers share their parameters across layers, so every
  truncated sub-model uses the same head."""
  kind: str = "mean"
  num_heads: int = 8
  num_latents: int = 64

  @nn.compact
  def __call__(self, hidden_states, pool_mask, layers, num_layers: int | None = None):
    """`num_layers`: the encoder's depth, when `hidden_states` stop short of it
    (early exit)."""
    kind = check_pooling(self.kind)
    if kind == "multilayer":
      return MultiLayerPool(self.num_heads, name="multilayer")(
          hidden_states, pool_mask, layers, num_layers)
    if kind == "map":
      fn = MAPPool(self.num_heads, name="map")
    elif kind == "latent":
      fn = LatentAttentionPool(self.num_heads, self.num_latents, name="latent")
    else:
      fn = FUNCTIONS[kind]
    return jnp.stack([fn(hidden_states[layer], pool_mask) for layer in layers], axis=1)
