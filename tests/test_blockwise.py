"""Global negatives and the blockwise (ring) losses on 8 devices against the plain
loss on the concatenated batch: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxembed import sharding as shd
from jaxembed.losses import info_nce, sigmoid_loss
from jaxembed.losses.blockwise import ring_info_nce, ring_sigmoid_loss
from test_losses import ref_info_nce


def ref_info_nce_with_negatives(q, d, n, scale):
  """float64 loop: candidates are every positive and every hard negative."""
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  cands = np.concatenate([d, n.reshape(-1, n.shape[-1])])
  cands = cands / np.linalg.norm(cands, axis=1, keepdims=True)
  total = 0.0
  for i in range(len(q)):
    s = scale * cands @ qn[i]
    total += np.log(np.exp(s).sum()) - s[i]
  return total / len(q)


def per_device_batches(rng, n_dev=8, b=4, k=2, dim=16):
  """What each device would hold: its queries, positives and k hard negatives each."""
  q = rng.normal(size=(n_dev * b, dim))
  d = rng.normal(size=(n_dev * b, dim))
  n = rng.normal(size=(n_dev * b, k, dim))
  d[5] = d[9]  # duplicates across devices
  return q, d, n


@pytest.fixture(scope="module")
def mesh():
  return shd.make_mesh(dict(data=4, fsdp=2))


def shard(mesh, x):
  return jax.device_put(jnp.asarray(x, jnp.float32),
                        NamedSharding(mesh, P(shd.BATCH_AXES)))


@pytest.mark.parametrize("with_negatives", [False, True])
def test_global_negatives_equal_concatenated_batch(mesh, with_negatives):
  q, d, n = per_device_batches(np.random.default_rng(0))
  n = n if with_negatives else None
  loss = jax.jit(lambda a, b, c: info_nce(a, b, c, scale=20.0))
  sharded = float(loss(shard(mesh, q), shard(mesh, d), None if n is None else shard(mesh, n)))
  single_dev = jax.devices()[0]
  put = lambda x: None if x is None else jax.device_put(jnp.asarray(x, jnp.float32), single_dev)
  single = float(loss(put(q), put(d), put(n)))
  assert sharded == pytest.approx(single, abs=1e-6)
  ref = (ref_info_nce(q, d, 20.0, False) if n is None
         else ref_info_nce_with_negatives(q, d, n, 20.0))
  assert sharded == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_ring_info_nce_equals_plain(mesh, symmetric, with_negatives):
  q, d, n = per_device_batches(np.random.default_rng(1))
  n = shard(mesh, n) if with_negatives else None
  q, d = shard(mesh, q), shard(mesh, d)
  plain = jax.jit(jax.value_and_grad(
      lambda a, b, c: info_nce(a, b, c, scale=20.0, symmetric=symmetric), argnums=(0, 1)))
  ring = jax.jit(jax.value_and_grad(
      lambda a, b, c: ring_info_nce(a, b, c, mesh=mesh, scale=20.0, symmetric=symmetric,
                                    chunk=2), argnums=(0, 1)))
  (v1, g1), (v2, g2) = plain(q, d, n), ring(q, d, n)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_ring_sigmoid_equals_plain(mesh, with_negatives):
  q, d, n = per_device_batches(np.random.default_rng(2))
  n = shard(mesh, n) if with_negatives else None
  q, d = shard(mesh, q), shard(mesh, d)
  t, b = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
  plain = jax.jit(jax.value_and_grad(
      lambda *a: sigmoid_loss(a[0], a[1], a[4], log_scale=a[2], bias=a[3]),
      argnums=(0, 1, 2, 3)))
  ring = jax.jit(jax.value_and_grad(
      lambda *a: ring_sigmoid_loss(a[0], a[1], a[4], log_scale=a[2], bias=a[3], mesh=mesh,
                                   chunk=4), argnums=(0, 1, 2, 3)))
  (v1, g1), (v2, g2) = plain(q, d, t, b, n), ring(q, d, t, b, n)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
  for a, b_ in zip(g2, g1):
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)


def test_sigmoid_matches_numpy():
  rng = np.random.default_rng(3)
  q, d = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  dn = d / np.linalg.norm(d, axis=1, keepdims=True)
  total = 0.0
  for i in range(5):
    for j in range(5):
      z = 1.0 if i == j else -1.0
      total += np.log(1 / (1 + np.exp(-z * (10.0 * qn[i] @ dn[j] - 10.0))))
  got = sigmoid_loss(jnp.asarray(q), jnp.asarray(d), log_scale=np.log(10.0), bias=-10.0)
  assert float(got) == pytest.approx(-total / 5, rel=1e-5)


def test_blockwise_memory_grows_linearly_in_the_global_batch():
  """XLA's compiled per-device scratch memory for loss + gradient, 8k -> 64k."""
  from benchmarks.blockwise_memory import table
  (b0, plain0, ring0), *_, (b1, plain1, ring1) = table()
  assert b1 == 8 * b0
  assert ring1 / ring0 < 10, (ring0, ring1)     # linear: ~8x
  assert plain1 / plain0 > 40, (plain0, plain1)  # quadratic: ~64x
  assert ring1 < plain1 / 20
