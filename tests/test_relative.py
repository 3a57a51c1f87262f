"""Relative representations: cosines to anchors against a slow loop, and invariance
to what relative representations are built to ignore (rotation and rescaling)."""

import numpy as np
import pytest

from jaxembed.evals.relative import relative


def test_relative_equals_a_slow_loop():
  rng = np.random.default_rng(0)
  x, anchors = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
  got = relative(x, anchors)
  for i in range(7):
    for j in range(4):
      want = x[i] @ anchors[j] / (np.linalg.norm(x[i]) * np.linalg.norm(anchors[j]))
      assert got[i, j] == pytest.approx(want, abs=1e-12)


def test_relative_is_invariant_to_rotation_and_scale_of_the_space():
  """The same samples in a rotated, rescaled space (another 'encoder') give the same
  relative representation; their absolute vectors differ."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(20, 6))
  rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  y = 3.0 * x @ rotation
  np.testing.assert_allclose(relative(y, y[:5]), relative(x, x[:5]), atol=1e-12)
  assert not np.allclose(x, y)


def test_cross_space_retrieval_equals_slow_loops():
  from jaxembed.evals.relative import cross_space_retrieval
  rng = np.random.default_rng(2)
  source, target = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
  queries = [0, 5, 7, 29]
  got = cross_space_retrieval(source, target, queries, k=3)
  cos = lambda u, v: float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
  mrr, jac, cs = [], [], []
  for i in queries:
    cross = [cos(source[i], target[j]) for j in range(30)]
    own = [cos(target[i], target[j]) for j in range(30)]
    rank = 1 + sum(c > cross[i] for c in cross)
    a = set(sorted(range(30), key=lambda j: -cross[j])[:3])
    b = set(sorted(range(30), key=lambda j: -own[j])[:3])
    mrr.append(1 / rank)
    jac.append(len(a & b) / len(a | b))
    cs.append(cross[i])
  assert got == pytest.approx({"mrr": np.mean(mrr), "jaccard": np.mean(jac),
                               "cosine": np.mean(cs)}, abs=1e-12)


def test_cross_space_retrieval_of_a_rotated_space():
  """A rotated copy: absolute vectors find nothing in particular, relative ones
  (same anchor words) find every word at rank 1."""
  from jaxembed.evals.relative import cross_space_retrieval
  rng = np.random.default_rng(3)
  x = rng.normal(size=(200, 8))
  rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  y = x @ rotation
  queries = np.arange(50)
  rel = cross_space_retrieval(relative(x, x[100:150]), relative(y, y[100:150]), queries)
  assert rel == pytest.approx({"mrr": 1.0, "jaccard": 1.0, "cosine": 1.0})
  absolute = cross_space_retrieval(x, y, queries)
  assert absolute["mrr"] < 0.5 and absolute["cosine"] < 0.5
