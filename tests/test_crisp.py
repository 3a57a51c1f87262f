"""CRISP's in-training clustering and its fixed-selection baselines against NumPy:
k-means from the same initial tokens gives the same centroids, the gradient through the
centroids equals finite differences (float64), and tail / spacing pick the tokens a
plain loop picks, with padding, skipped tokens and texts shorter than k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.models.multivector import maxsim, reduce_tokens


def batch(rng, b=4, layers=2, t=12, d=6):
  x = rng.normal(size=(b, layers, t, d))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  counted = np.zeros((b, t))
  counted[0, :12] = 1
  counted[1, :7] = 1
  counted[1, 3] = 0                # a skipped punctuation token
  counted[2, :3] = 1               # fewer tokens than clusters
  counted[3, :9] = 1
  return x, counted


def counted_positions(row):
  return [i for i, c in enumerate(row) if c]


def ref_init(counted, k):
  """The j-th of n counted tokens for slot j: floor(j n / k), or j when n < k."""
  out = []
  for row in counted:
    pos = counted_positions(row)
    n = len(pos)
    out.append([pos[(j * n) // k] if n >= k else (pos[j] if j < n else None)
                for j in range(k)])
  return out


def ref_kmeans(x, counted, k, iterations):
  """Plain loops: Lloyd steps on the cosine from the evenly spaced tokens."""
  b, layers = x.shape[:2]
  init = ref_init(counted, k)
  out = np.zeros((b, layers, k, x.shape[-1]))
  for i in range(b):
    pos = counted_positions(counted[i])
    slots = [j for j in range(k) if init[i][j] is not None]
    for l in range(layers):
      cent = {j: x[i, l, init[i][j]].copy() for j in slots}
      for _ in range(iterations):
        members = {j: [] for j in slots}
        for p in pos:
          best = max(slots, key=lambda j: (float(x[i, l, p] @ cent[j]), -j))
          members[best].append(x[i, l, p])
        for j in slots:
          if members[j]:
            cent[j] = np.mean(members[j], axis=0)
      for j in slots:
        out[i, l, j] = cent[j] / np.linalg.norm(cent[j])
  mask = np.array([[init[i][j] is not None for j in range(k)] for i in range(b)], float)
  return out, mask


@pytest.mark.parametrize("iterations", [0, 1, 4])
def test_kmeans_equals_numpy_from_the_same_start(iterations):
  x, counted = batch(np.random.default_rng(0))
  ours, mask = reduce_tokens(jnp.asarray(x, jnp.float32), jnp.asarray(counted, jnp.float32),
                             "kmeans", 4, iterations=iterations)
  ref, ref_mask = ref_kmeans(x, counted, 4, iterations)
  np.testing.assert_array_equal(np.asarray(mask), ref_mask)
  live = ref_mask[:, None, :, None] > 0
  np.testing.assert_allclose(np.where(live, np.asarray(ours), 0), np.where(live, ref, 0),
                             atol=1e-5)


@pytest.mark.parametrize("how", ["tail", "spacing"])
def test_fixed_selections_pick_what_a_loop_picks(how):
  x, counted = batch(np.random.default_rng(1))
  k = 4
  ours, mask = reduce_tokens(jnp.asarray(x, jnp.float32), jnp.asarray(counted, jnp.float32),
                             how, k)
  for i, row in enumerate(counted):
    pos = counted_positions(row)
    if how == "tail":
      want = [pos[len(pos) - k + j] if len(pos) - k + j >= 0 else None for j in range(k)]
    else:
      want = ref_init(counted[i:i + 1], k)[0]
    for j, p in enumerate(want):
      assert mask[i, j] == (p is not None)
      if p is not None:
        np.testing.assert_allclose(np.asarray(ours)[i, :, j], x[i, :, p], atol=1e-6)


@pytest.fixture
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def test_gradient_through_the_centroids_equals_finite_differences(float64):
  """MaxSim of queries against clustered documents, differentiated with respect to the
  documents' token vectors (float64; the assignments do not change under the step)."""
  rng = np.random.default_rng(2)
  docs, counted = batch(rng)
  q = rng.normal(size=(3, 5, docs.shape[-1]))
  qm = np.ones((3, 5))

  def score(d):
    cent, mask = reduce_tokens(d, jnp.asarray(counted), "kmeans", 4, iterations=3)
    return jnp.sum(jnp.sin(maxsim(jnp.asarray(q), jnp.asarray(qm), cent[:, 1], mask)))
  d0 = jnp.asarray(docs)
  grad = np.asarray(jax.grad(score)(d0))
  eps = 1e-6
  for idx in [(0, 1, 2, 0), (1, 1, 4, 3), (2, 1, 1, 5), (3, 1, 8, 2), (0, 0, 3, 1)]:
    e = np.zeros_like(docs)
    e[idx] = eps
    fd = (float(score(d0 + e)) - float(score(d0 - e))) / (2 * eps)
    assert grad[idx] == pytest.approx(fd, abs=1e-6), idx
  assert np.abs(grad[:, 1]).max() > 0 and np.all(grad[:, 0] == 0)   # layer 0 unused
  assert np.all(grad[1, 1, 3] == 0)                   # the skipped token is no member


def test_post_hoc_reduction_of_a_model_equals_numpy_on_its_own_vectors():
  """`with_token_reduction` (CRISP's post-hoc baselines): a model's document vectors
  clustered after training equal NumPy's k-means of the unreduced model's vectors
  from the same start; tail keeps the last k; queries and parameters are untouched."""
  import os
  import sys
  from conftest import REPO
  sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
  import multivector_model
  from jaxembed.errors import ConfigError
  model = multivector_model.model()
  texts = multivector_model.TEXTS
  full = model.encode_multivector(texts)
  k = 4
  clustered = model.with_token_reduction(doc=("kmeans", k)).encode_multivector(texts)
  tail = model.with_token_reduction(doc=("tail", k)).encode_multivector(texts)
  for v, c, t in zip(full, clustered, tail):
    x = v.astype(np.float64)[None, None]
    counted = np.ones((1, len(v)))
    want, mask = ref_kmeans(x, counted, k, iterations=5)
    want = want[0, 0][mask[0] > 0]
    assert c.shape == want.shape, (c.shape, want.shape)
    np.testing.assert_allclose(c, want, atol=2e-5)
    np.testing.assert_allclose(t, v[-min(k, len(v)):], atol=1e-6)
  queries = model.with_token_reduction(doc=("kmeans", k)).encode_multivector(
      texts, is_query=True)
  for a, b in zip(queries, model.encode_multivector(texts, is_query=True)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="doc=\\('mean', 4\\)"):
    model.with_token_reduction(doc=("mean", 4))
