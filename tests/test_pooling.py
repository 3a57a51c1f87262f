"""The trainable poolers (MAP, NV-Embed latent attention, multi-layer) and instruction
masking against NumPy written per example and per head, with padding on both sides
and all-padding rows."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxembed.models import pooling

MASK = np.array([[1, 1, 1, 0, 0, 0],     # right padding
                 [0, 0, 1, 1, 1, 1],     # left padding
                 [1, 1, 1, 1, 1, 1],     # none
                 [0, 0, 0, 0, 0, 0]],    # all padding
                np.int32)


def np_ln(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):
  from scipy.special import erf
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def np_mlp(x, p):
  h = np_gelu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def np_attention(queries, context, keep, p):
  """One example: queries [Q, W], context [K, W], keep [K] bool."""
  heads = p["query"]["kernel"].shape[1]
  out = np.zeros((queries.shape[0],) + p["query"]["kernel"].shape[1:])
  for h in range(heads):
    q = queries @ p["query"]["kernel"][:, h] + p["query"]["bias"][h]
    k = context @ p["key"]["kernel"][:, h] + p["key"]["bias"][h]
    v = context @ p["value"]["kernel"][:, h] + p["value"]["bias"][h]
    logits = q @ k.T / np.sqrt(q.shape[-1])
    logits = np.where(keep[None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    out[:, h] = (w / w.sum(-1, keepdims=True)) @ v
  return np.einsum("qhd,hdw->qw", out, p["output"]["kernel"]) + p["output"]["bias"]


def init(module, *args):
  params = nn.unbox(module.init(jax.random.PRNGKey(1), *args))["params"]
  # biases and norms away from their init values, so that a missing one shows
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(7)
  leaves = [np.asarray(l, np.float64) + 0.1 * rng.standard_normal(l.shape) for l in leaves]
  return jax.tree.unflatten(tree, leaves)


def as64(params):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def test_map_head():
  rng = np.random.default_rng(0)
  h = rng.standard_normal((4, 6, 8)).astype(np.float32)
  module = pooling.MAPPool(num_heads=2)
  params = init(module, h, MASK)
  got = np.asarray(module.apply({"params": params}, h, MASK))
  p = as64(params)
  for b in range(4):
    keep = MASK[b].astype(bool) if MASK[b].any() else np.ones(6, bool)
    x = np_attention(p["probe"], h[b].astype(np.float64), keep, p["attention"])
    x = x + np_mlp(np_ln(x, p["norm"]), p["mlp"])
    np.testing.assert_allclose(got[b], x[0], rtol=1e-4, atol=1e-5)
  assert np.isfinite(got).all()


def test_latent_attention():
  rng = np.random.default_rng(1)
  h = rng.standard_normal((4, 6, 8)).astype(np.float32)
  module = pooling.LatentAttentionPool(num_heads=2, num_latents=5)
  params = init(module, h, MASK)
  got = np.asarray(module.apply({"params": params}, h, MASK))
  p = as64(params)
  for b in range(4):
    x = h[b].astype(np.float64)
    lat = np_ln(p["latents"], p["norm_latents"])
    x = x + np_attention(np_ln(x, p["norm_queries"]), lat, np.ones(5, bool), p["attention"])
    x = x + np_mlp(np_ln(x, p["norm_mlp"]), p["mlp"])
    idx = np.flatnonzero(MASK[b])
    want = x[idx].mean(0) if len(idx) else np.zeros(8)
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_multilayer_pooling_sees_only_layers_up_to_its_own():
  rng = np.random.default_rng(2)
  states = tuple(rng.standard_normal((4, 6, 8)).astype(np.float32) for _ in range(4))
  module = pooling.MultiLayerPool(num_heads=2, num_latents=3)
  layers = (1, 2, 3)
  params = init(module, states, MASK, layers)
  got = np.asarray(module.apply({"params": params}, states, MASK, layers))
  assert got.shape == (4, 3, 8)
  p = as64(params)
  for b in range(4):
    idx = np.flatnonzero(MASK[b])
    last = idx[-1] if len(idx) else 0
    summ = np.stack([s[b, last].astype(np.float64) for s in states[1:]])
    ctx = np_ln(summ + p["layer_embedding"], p["norm_layers"])
    for j, layer in enumerate(layers):
      x = np_attention(p["queries"], ctx, np.arange(3) < layer, p["attention"])
      x = x + np_mlp(np_ln(x, p["norm_mlp"]), p["mlp"])
      np.testing.assert_allclose(got[b, j], x.mean(0), rtol=1e-4, atol=1e-5)
  # Changing layer 3 leaves the layer-1 and layer-2 outputs alone.
  changed = states[:3] + (states[3] + rng.standard_normal(states[3].shape).astype(np.float32),)
  again = np.asarray(module.apply({"params": params}, changed, MASK, layers))
  np.testing.assert_array_equal(again[:, :2], got[:, :2])
  assert not np.allclose(again[:, 2], got[:, 2])


@pytest.mark.parametrize("kind", ["mean", "weighted_mean", "max", "last_token", "map", "latent"])
def test_instruction_tokens_are_attended_but_not_pooled(kind):
  """Pooling with a pool mask that drops the instruction equals pooling the same
  states restricted to the non-instruction tokens."""
  from jaxembed.models.embedder import Embedder
  from jaxembed.models.bert import BertConfig
  cfg = BertConfig(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2,
                   intermediate_size=24, max_position_embeddings=16, hidden_dropout=0.0,
                   attention_dropout=0.0)
  ids = np.array([[2, 9, 9, 5, 6, 7, 3, 0], [2, 9, 9, 5, 6, 3, 0, 0]])
  attn = (ids > 0).astype(np.int32)
  pool = attn.copy()
  pool[:, 1:3] = 0                       # the instruction: tokens 1 and 2
  model = Embedder(cfg, pooling=kind, pool_heads=2, pool_latents=4)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, attn))["params"]
  got = np.asarray(model.apply({"params": params}, ids, attn, pool_mask=pool))
  from jaxembed.models.bert import BertEncoder
  hidden = BertEncoder(cfg).apply({"params": params["encoder"]}, ids, attn)
  pooler = pooling.Pooler(kind, 2, 4)
  want = np.asarray(pooler.apply({"params": params.get("pooler", {})}, hidden, pool, (1, 2)))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  full = np.asarray(model.apply({"params": params}, ids, attn))
  if kind != "last_token":               # (the last token is not an instruction token)
    assert not np.allclose(full, got)     # the instruction tokens were excluded
