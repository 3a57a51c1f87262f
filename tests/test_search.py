"""Blockwise exact search: sharded on 8 devices equals one device exactly, and both
equal a brute-force NumPy sort (ties to the lower index)."""

import numpy as np
import pytest

from jaxembed import sharding as shd
from jaxembed.evals.search import exact_search


@pytest.mark.parametrize("n, block", [(1000, 64), (997, 50), (40, 1024)])
def test_sharded_equals_single_device_and_brute_force(n, block):
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(13, 16)).astype(np.float32)
  corpus = np.round(rng.normal(size=(n, 16)), 1).astype(np.float32)
  corpus[3] *= 10
  corpus[n // 2] = corpus[3]  # an exact tie across devices, at the top for query 0
  corpus[n - 1] = corpus[5]
  queries[0] = corpus[3] / 10
  k = 10
  one = exact_search(queries, corpus, k, block=block)
  mesh = shd.make_mesh(dict(data=4, fsdp=2))
  eight = exact_search(queries, corpus, k, mesh=mesh, block=block)
  np.testing.assert_array_equal(eight[1], one[1])
  np.testing.assert_array_equal(eight[0], one[0])
  full = queries.astype(np.float64) @ corpus.T.astype(np.float64)
  for i in range(len(queries)):
    want = sorted(range(n), key=lambda j: (-full[i, j], j))[:k]
    # float32 against float64: the same scores, in the same order up to near-ties
    np.testing.assert_allclose(one[0][i], full[i, want], rtol=1e-5, atol=1e-5)
    scores, index = one[0][i], one[1][i]
    for j in range(k - 1):  # exact ties keep the lower index first
      if scores[j] == scores[j + 1]:
        assert index[j] < index[j + 1]
  assert list(one[1][0][:2]) == [3, n // 2]
