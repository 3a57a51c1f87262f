"""BEBR's recurrent binarisation against independent NumPy references: the symmetric
distance computation equals the float64 inner product of the binary values, the
initial binariser is plain residual binarisation (one step: sign binarisation), the
straight-through sign has hardtanh's gradient, and fitting improves the ranking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.errors import ConfigError
from jaxembed.evals import quantize
from jaxembed.models.binarizer import RecurrentBinarizer, initial_weights, sign_ste
from jaxembed.train.binarize import Binarizer, fit_binarizer


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_sdc_equals_the_inner_product_of_binary_values():
  rng = np.random.default_rng(0)
  steps, m = 3, 13                       # 13 bits: the last byte is padded
  q = rng.random((5, steps, m)) > 0.5
  d = rng.random((7, steps, m)) > 0.5
  w = np.array([0.7, 0.3, 0.11])
  got = quantize.sdc_scores(np.packbits(q, -1), np.packbits(d, -1), w, m)
  value = lambda bits: sum(w[t] * np.where(bits[:, t], 1.0, -1.0) for t in range(steps))
  want = np.zeros((5, 7))
  for i in range(5):
    for j in range(7):
      want[i, j] = sum(a * b for a, b in zip(value(q)[i], value(d)[j]))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  top = quantize.sdc_search(np.packbits(q, -1), np.packbits(d, -1), w, m, 3)
  np.testing.assert_array_equal(top, np.argsort(-want, axis=1, kind="stable")[:, :3])


def test_sign_ste_forward_and_gradient():
  x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5])
  np.testing.assert_array_equal(np.asarray(sign_ste(x)), [-1, -1, 1, 1, 1])
  g = jax.grad(lambda v: jnp.sum(sign_ste(v) * jnp.arange(1.0, 6.0)))(x)
  np.testing.assert_array_equal(np.asarray(g), [0, 2, 3, 4, 0])


def test_initial_binarizer_is_residual_binarisation():
  rng = np.random.default_rng(1)
  x = unit(rng.normal(size=(9, 16))).astype(np.float32)
  module = RecurrentBinarizer(code_dim=16, steps=3)
  params = module.init(jax.random.PRNGKey(0), x)["params"]
  b = Binarizer(module, params)
  # NumPy: r = x; c_t = sign(r); r -= w_t c_t.
  w = initial_weights(16, 3).astype(np.float64)
  r, want = x.astype(np.float64), []
  for t in range(3):
    c = np.where(r >= 0, 1.0, -1.0)
    want.append(c > 0)
    r = r - w[t] * c
  np.testing.assert_array_equal(b.signs(x), np.stack(want, 1))
  np.testing.assert_allclose(b.weights, w, rtol=1e-6)
  one = Binarizer(RecurrentBinarizer(code_dim=16, steps=1),
                  RecurrentBinarizer(code_dim=16, steps=1).init(
                      jax.random.PRNGKey(0), x)["params"])
  np.testing.assert_array_equal(one.codes(x)[:, 0], quantize.pack_binary(x))


def overlap_at_10(scores, exact):
  top = np.argsort(-scores, axis=1)[:, :10]
  truth = np.argsort(-exact, axis=1)[:, :10]
  return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, truth)])


def score_correlation(scores, exact):
  """Mean over queries of Pearson's r between approximate and exact scores."""
  return np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(scores, exact)])


def test_fitting_lowers_the_loss_and_ranks_closer_to_the_floats():
  rng = np.random.default_rng(2)
  # Clusters around a common offset (as real embeddings share a mean direction): the
  # sign bits of raw coordinates waste much of their information on the offset.
  offset = np.abs(rng.normal(size=24)) * 1.5
  centres = rng.normal(size=(20, 24))
  x = unit(offset + centres[rng.integers(0, 20, 1200)] + 0.3 * rng.normal(size=(1200, 24)))
  x = x.astype(np.float32)
  init = fit_binarizer(x, steps=2, iterations=1, seed=0, learning_rate=0.0)
  fitted = fit_binarizer(x[100:], steps=2, iterations=400, batch_size=256, seed=0,
                         learning_rate=3e-3)
  assert fitted.history[-1][1] < 0.5 * fitted.history[0][1]
  q, d = x[:100], x[100:]            # the queries were not fitted on
  exact = q @ d.T
  scored = lambda b: quantize.sdc_scores(b.codes(q), b.codes(d), b.weights, 24)
  before, after = scored(init), scored(fitted)
  assert score_correlation(after, exact) > score_correlation(before, exact) + 0.05
  assert overlap_at_10(after, exact) >= overlap_at_10(before, exact)
  # The values SDC scores are the model's own composite: the same numbers.
  np.testing.assert_allclose(after, fitted.values(q) @ fitted.values(d).T, rtol=1e-5,
                             atol=1e-6)


def test_bad_settings_are_named():
  with pytest.raises(ConfigError, match="steps=0"):
    fit_binarizer(np.ones((4, 3)), steps=0)
  with pytest.raises(ConfigError, match="at least 2"):
    fit_binarizer(np.ones((1, 3)), steps=1)
