"""GradCache gives the full-batch gradient, with dropout on, and its memory is bounded
by the mini-batch."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.losses import build_cells, info_nce, matryoshka_loss
from jaxembed.models import Embedder
from jaxembed.models.bert import BertConfig
from jaxembed.train.grad_cache import (grad_cache_value_and_grad, merge_minibatches,
                                       split_minibatches)
from jaxembed.train.step import encode_pairs

BERT = BertConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=2,
                  intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.1,
                  attention_dropout=0.1)
MODEL = Embedder(BERT)
CELLS = build_cells("grid", num_layers=2, hidden=32, layers=(1, 2), dims=(8, 32))


def loss_fn(q, d):
  return matryoshka_loss(q, d, CELLS, layer_index={1: 0, 2: 1}, scale=20.0)


def make_batch(b, t, seed=0):
  rng = np.random.default_rng(seed)
  def side():
    lengths = rng.integers(3, t + 1, size=b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": jnp.asarray(rng.integers(1, 97, size=(b, t)) * mask, jnp.int32),
            "attention_mask": jnp.asarray(mask)}
  return {"anchor": side(), "positive": side()}


def init_params():
  ids = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(MODEL.init(jax.random.PRNGKey(0), ids, ids))["params"]


def encode(deterministic):
  return lambda p, sub, key: encode_pairs(MODEL, p, sub, key, deterministic=deterministic)


def test_split_and_merge_are_inverse_and_strided():
  x = jnp.arange(12)
  parts = split_minibatches(x, 3)
  np.testing.assert_array_equal(parts[1], [1, 4, 7, 10])
  np.testing.assert_array_equal(merge_minibatches(parts), x)


@pytest.mark.parametrize("deterministic", [True, False])
def test_grad_cache_equals_full_batch_gradient(deterministic):
  params, batch, rng = init_params(), make_batch(16, 12), jax.random.PRNGKey(3)
  n = 4
  (loss, _), grads = jax.jit(functools.partial(
      grad_cache_value_and_grad, encode(deterministic), lambda e, p: loss_fn(*e),
      minibatch=4))(params, batch, rng)

  if deterministic:  # no dropout: the plain gradient of the whole batch at once
    def reference(p):
      return loss_fn(*encode(True)(p, batch, rng))[0]
  else:  # dropout: the same mask per mini-batch, everything differentiated at once
    def reference(p):
      subs = split_minibatches(batch, n)
      keys = jax.random.split(rng, n)
      outs = [encode(False)(p, jax.tree.map(lambda x: x[i], subs), keys[i])
              for i in range(n)]
      q = merge_minibatches(jnp.stack([o[0] for o in outs]))
      d = merge_minibatches(jnp.stack([o[1] for o in outs]))
      return loss_fn(q, d)[0]
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-3


def last_layer_loss(q, d):
  """One cell: what GradCache bounds is the encoder's memory, so the memory test keeps
  the loss's own (B x B) share small."""
  return info_nce(q[:, -1], d[:, -1]), {}


def compiled_temp_bytes(batch_size, minibatch):
  params, batch = init_params(), make_batch(batch_size, 32)
  if minibatch:
    f = functools.partial(grad_cache_value_and_grad, encode(False),
                          lambda e, p: last_layer_loss(*e), minibatch=minibatch)
  else:
    f = lambda p, b, r: jax.value_and_grad(
        lambda q: last_layer_loss(*encode(False)(q, b, r)), has_aux=True)(p)
  compiled = jax.jit(f).lower(params, batch, jax.random.PRNGKey(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def loss_only_temp_bytes(batch_size):
  emb = jax.ShapeDtypeStruct((batch_size, 2, 32), jnp.float32)
  f = jax.jit(jax.value_and_grad(lambda q, d: last_layer_loss(q, d)[0], argnums=(0, 1)))
  return f.lower(emb, emb).compile().memory_analysis().temp_size_in_bytes


def test_memory_is_bounded_by_the_minibatch():
  """XLA's compiled scratch memory, batch 256 -> 1024 (mini-batch 32). The loss's own
  B x B logits grow with the batch in both (that is what the blockwise loss is for);
  the encoder's share does not grow under GradCache."""
  batches = (256, 1024)
  full = {b: compiled_temp_bytes(b, 0) for b in batches}
  cached = {b: compiled_temp_bytes(b, 32) for b in batches}
  loss = {b: loss_only_temp_bytes(b) for b in batches}
  encoder_share = {b: cached[b] - loss[b] for b in batches}
  assert full[1024] / full[256] > 3.0, full
  assert encoder_share[1024] / encoder_share[256] < 1.5, (cached, loss)
  assert cached[1024] < full[1024] / 8, (cached, full)


def test_train_loop_with_grad_cache_on_8_devices(smoke_config):
  """Through the real train step, sharded: with dropout off GradCache must not change
  the trajectory at all."""
  from test_sharding import run_steps
  config = smoke_config(**{"train.dropout": False})
  _, _, plain = run_steps(config, jax.devices())
  config.train.grad_cache_minibatch = 8
  _, _, cached = run_steps(config, jax.devices())
  np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-5)
