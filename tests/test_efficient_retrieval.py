"""Funnel (Matryoshka adaptive) retrieval, binary / int8 quantised retrieval and MUVERA
encodings, each against slow obvious loops."""

import numpy as np
import pytest

from jaxembed.evals import funnel, muvera, quantize


def clustered(rng, n, d, centers):
  c = rng.standard_normal((len(centers), d))
  x = c[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, d))
  return x.astype(np.float32)


def slow_topk(scores, k):
  return [sorted(range(len(s)), key=lambda j: (-s[j], j))[:k] for s in scores]


def test_funnel_against_loops():
  rng = np.random.default_rng(0)
  q, c = clustered(rng, 20, 64, range(5)), clustered(rng, 300, 64, range(5))
  def cos(a, b, d):
    a, b = a[:d] / np.linalg.norm(a[:d]), b[:d] / np.linalg.norm(b[:d])
    return float(a @ b)
  # One stage at full width is exact search.
  got, flops = funnel.funnel_search(q, c, [funnel.Stage(64, 10)])
  want = slow_topk([[cos(a, b, 64) for b in c] for a in q], 10)
  np.testing.assert_array_equal(got, want)
  assert flops == 2 * 300 * 64
  # Shortlist 40 at dim 8, rerank at 32, keep 10: a per-query loop.
  stages = [funnel.Stage(8, 40), funnel.Stage(32, 10)]
  got, flops = funnel.funnel_search(q, c, stages)
  for qi, a in enumerate(q):
    short = slow_topk([[cos(a, b, 8) for b in c]], 40)[0]
    scores = [cos(a, c[j], 32) for j in short]
    order = sorted(range(40), key=lambda i: (-scores[i], i))[:10]
    np.testing.assert_array_equal(got[qi], [short[i] for i in order])
  assert flops == 2 * (300 * 8 + 40 * 32)
  assert funnel.index_bytes(300, stages) == 300 * 32 * 4
  with pytest.raises(ValueError, match="must shrink"):
    funnel.funnel_search(q, c, [funnel.Stage(8, 10), funnel.Stage(16, 20)])


def test_binary_and_hamming_against_loops():
  rng = np.random.default_rng(1)
  q, c = rng.standard_normal((7, 21)), rng.standard_normal((50, 21))
  bits = quantize.pack_binary(c)
  assert bits.shape == (50, 3) and bits.dtype == np.uint8
  ham = quantize.hamming(quantize.pack_binary(q), bits)
  for i in range(7):
    for j in range(50):
      assert ham[i, j] == sum((q[i, t] > 0) != (c[j, t] > 0) for t in range(21))
  got = quantize.binary_search(q, c, 5)
  np.testing.assert_array_equal(got, slow_topk(-ham, 5))
  assert quantize.bytes_per_vector("binary", 21) == 3
  # Rescoring every document is exact float search.
  everything = np.tile(np.arange(50), (7, 1))
  np.testing.assert_array_equal(quantize.rescore(q, c, everything, 5),
                                slow_topk(q @ c.T, 5))


@pytest.mark.parametrize("dim, n", [(21, 50), (8, 400), (384, 3000)])
def test_binary_search_with_faiss_gives_the_same_top_k(dim, n):
  """faiss' IndexBinaryFlat path returns the numpy path's top k, in the same order, also
  where Hamming ties are everywhere (8 bits) and at a width that is not whole bytes."""
  import faiss  # noqa: F401  (a test dependency: the comparison must run)
  rng = np.random.default_rng(dim)
  q, c = rng.standard_normal((30, dim)), rng.standard_normal((n, dim))
  k = min(100, n)
  want = quantize.binary_search(q, c, k, backend="numpy")
  np.testing.assert_array_equal(quantize.binary_search(q, c, k, backend="faiss"), want)
  np.testing.assert_array_equal(quantize.binary_search(q, c, k), want)   # auto
  ham = quantize.hamming(quantize.pack_binary(q), quantize.pack_binary(c))
  np.testing.assert_array_equal(want, slow_topk(-ham, k))
  with pytest.raises(ValueError, match="backend='annoy'"):
    quantize.binary_search(q, c, k, backend="annoy")


def test_int8_calibration_and_search():
  rng = np.random.default_rng(2)
  c = rng.standard_normal((200, 16)).astype(np.float32)
  cal = quantize.Int8Calibration.fit(c)
  codes = cal.quantize(c)
  assert codes.dtype == np.int8
  np.testing.assert_array_equal(codes.min(0), -128)
  np.testing.assert_array_equal(codes.max(0), 127)
  # Each code is the nearest of 256 evenly spaced levels over [low, high].
  levels = cal.low + (cal.high - cal.low) * (codes.astype(np.float64) + 128) / 255
  assert np.all(np.abs(levels - c) <= (cal.high - cal.low) / 255 / 2 + 1e-6)
  q = rng.standard_normal((5, 16)).astype(np.float32)
  got = quantize.int8_search(q, c, 10, cal)
  qi, ci = cal.quantize(q).astype(np.int64), codes.astype(np.int64)
  np.testing.assert_array_equal(got, slow_topk(qi @ ci.T, 10))
  assert quantize.recall_at_k(got, slow_topk(q @ c.T, 10), 10) > 0.5


def slow_fde(tokens, cfg, is_query):
  """MUVERA written per token and per bucket, from the paper's description."""
  parts = []
  for r in range(cfg.num_repetitions):
    rng = np.random.default_rng([cfg.seed, r])
    g = rng.standard_normal((cfg.dim, cfg.num_simhash))
    proj = (rng.choice([-1.0, 1.0], size=(cfg.dim, cfg.projection_dim))
            / np.sqrt(cfg.projection_dim)) if cfg.projection_dim else None
    codes = []
    for t in tokens:
      code = 0
      for b in range(cfg.num_simhash):
        code = code * 2 + int(t @ g[:, b] > 0)
      codes.append(code)
    width = cfg.projection_dim or cfg.dim
    for bucket in range(2 ** cfg.num_simhash):
      members = [(t @ proj if proj is not None else t)
                 for t, code in zip(tokens, codes) if code == bucket]
      if members:
        v = np.sum(members, 0) if is_query else np.mean(members, 0)
      elif not is_query and cfg.fill_empty:
        dists = [bin(code ^ bucket).count("1") for code in codes]
        t = tokens[int(np.argmin(dists))]
        v = t @ proj if proj is not None else t
      else:
        v = np.zeros(width)
      parts.append(v)
  return np.concatenate(parts)


@pytest.mark.parametrize("projection_dim", [None, 6])
def test_fde_matches_the_slow_loop(projection_dim):
  rng = np.random.default_rng(3)
  cfg = muvera.FDEConfig(dim=12, num_repetitions=3, num_simhash=3,
                         projection_dim=projection_dim, seed=5)
  docs = [rng.standard_normal((n, 12)) for n in (1, 4, 9)]
  for is_query in (True, False):
    got = muvera.encode(docs, cfg, is_query=is_query)
    assert got.shape == (3, cfg.output_dim)
    for doc, row in zip(docs, got):
      np.testing.assert_allclose(row, slow_fde(doc, cfg, is_query), rtol=1e-5, atol=1e-6)


def test_count_sketch_against_loop_and_unbiased():
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal(40), rng.standard_normal(40)
  got = muvera.count_sketch(x, 8, seed=9)
  r = np.random.default_rng(9)
  h, s = r.integers(0, 8, size=40), r.choice([-1.0, 1.0], size=40)
  want = np.zeros(8)
  for i in range(40):
    want[h[i]] += s[i] * x[i]
  np.testing.assert_allclose(got, want)
  est = [muvera.count_sketch(x, 8, i) @ muvera.count_sketch(y, 8, i) for i in range(4000)]
  # Var of the estimate <= 2|x|^2|y|^2 / 8; mean of 4000 within 4 standard errors.
  se = np.sqrt(2 * (x @ x) * (y @ y) / 8 / 4000)
  assert abs(np.mean(est) - x @ y) < 4 * se
  cfg = muvera.FDEConfig(dim=8, num_repetitions=2, num_simhash=2, final_dim=16)
  assert muvera.encode([x.reshape(5, 8)], cfg, is_query=True).shape == (1, 16)


def test_maxsim_and_fde_search_recover_exact_maxsim():
  rng = np.random.default_rng(5)
  def cloud(n):
    x = rng.standard_normal((n, 16))
    return x / np.linalg.norm(x, axis=1, keepdims=True)
  docs = [cloud(rng.integers(3, 12)) for _ in range(120)]
  queries = [d[:3] + 0.1 * rng.standard_normal((3, 16)) for d in docs[:15]]
  for q in queries[:3]:
    slow = [sum(max(float(a @ b) for b in d) for a in q) for d in docs]
    np.testing.assert_allclose(muvera.maxsim(q, docs), slow, rtol=1e-9)
  exact = muvera.exact_maxsim_search(queries, docs, 10)
  cfg = muvera.FDEConfig(dim=16, num_repetitions=20, num_simhash=3)
  found = [muvera.search(queries, docs, cfg, k=10, candidates=c) for c in (10, 40, 120)]
  recalls = [quantize.recall_at_k(f, exact, 10) for f in found]
  assert recalls[2] == 1.0                       # all candidates: exact MaxSim
  assert recalls[0] <= recalls[1] <= recalls[2] and recalls[1] > 0.6


@pytest.mark.slow
def test_tradeoff_report_runs_on_held_out_wordnet(tmp_path, tfds_dir):
  import json
  import subprocess
  import sys
  from conftest import REPO
  out = tmp_path / "t.json"
  done = subprocess.run([sys.executable, "-m", "experiments.retrieval_tradeoffs",
                         f"--tfds_dir={tfds_dir}", "--queries=40", "--candidates=5,40",
                         f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(out.read_text())
  funnel_rows = {tuple(map(tuple, r["stages"])): r for r in report["funnel"]}
  full = funnel_rows[((384, 10),)]
  n = full["flops_per_query"] / (2 * 384)
  assert funnel_rows[((32, 100), (384, 10))]["flops_per_query"] == 2 * (
      n * 32 + min(n, 100) * 384)
  quant = {(r["kind"], r["rescore"]): r for r in report["quantised"]}
  assert quant[("float32", 0)]["recall_at_10"] == 1.0
  assert quant[("binary", 0)]["bytes_per_vector"] == 48
  assert quant[("binary", 200)]["recall_at_10"] >= quant[("binary", 0)]["recall_at_10"]
  mv = report["muvera"]
  assert [r["candidates"] for r in mv] == ["exact MaxSim", 5, 40]
  assert mv[2]["recall_at_10"] >= mv[1]["recall_at_10"]
  assert "| 32→100 → 384→10 |" in done.stdout
