"""MaxSim scores and objectives against float64 NumPy loops (values and gradients, with
padding and hard negatives), and the ring form on 8 devices against one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxembed import sharding as shd
from jaxembed.losses import late_interaction as li


def ref_maxsim(q, qm, d, dm):
  """Slow loop, float64: sum over counted query tokens of the best counted doc token."""
  out = np.zeros((len(q), len(d)))
  for i in range(len(q)):
    for j in range(len(d)):
      total = 0.0
      for t in range(q.shape[1]):
        if not qm[i, t]:
          continue
        best = None
        for s in range(d.shape[1]):
          if dm[j, s]:
            v = float(np.dot(q[i, t], d[j, s]))
            best = v if best is None else max(best, v)
        total += 0.0 if best is None else best
      out[i, j] = total
  return out


def ref_info_nce_and_grads(q, qm, cands, cm, scale):
  """Loss and analytic gradients (float64 loops): dL/dlogit = (softmax - onehot) / B;
  a MaxSim logit sends its gradient to each counted query token and to the document
  token that was its maximum."""
  b = len(q)
  logits = scale * ref_maxsim(q, qm, cands, cm)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  loss = np.mean([np.log(np.exp(logits[i] - logits[i].max()).sum()) + logits[i].max()
                  - logits[i, i] for i in range(b)])
  g = (p - np.eye(b, len(cands))) / b
  gq, gc = np.zeros_like(q), np.zeros_like(cands)
  for i in range(b):
    for j in range(len(cands)):
      for t in range(q.shape[1]):
        counted = [s for s in range(cands.shape[1]) if cm[j, s]]
        if not qm[i, t] or not counted:
          continue
        s = max(counted, key=lambda s: np.dot(q[i, t], cands[j, s]))
        gq[i, t] += g[i, j] * scale * cands[j, s]
        gc[j, s] += g[i, j] * scale * q[i, t]
  return loss, gq, gc


def token_batch(rng, n, t, dim, *, min_tokens=1):
  x = rng.normal(size=(n, t, dim))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  lengths = rng.integers(min_tokens, t + 1, size=n)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  return x, mask


def test_maxsim_equals_loop_with_padding_and_an_empty_document():
  rng = np.random.default_rng(0)
  q, qm = token_batch(rng, 5, 6, 8)
  d, dm = token_batch(rng, 7, 9, 8)
  dm[3] = 0                                       # no counted token: scores 0
  ref = ref_maxsim(q, qm, d, dm)
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  ours = li.maxsim(f32(q), f32(qm), f32(d), f32(dm))
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5)
  assert np.all(np.asarray(ours)[:, 3] == 0)
  chunked = li.chunked_maxsim(f32(q), f32(qm), f32(d), f32(dm), chunk=3)  # 7: chunks of 1
  np.testing.assert_allclose(np.asarray(chunked), ref, atol=1e-5)
  paired = li.paired_maxsim(f32(q), f32(qm), f32(d[:5]), f32(dm[:5]))
  np.testing.assert_allclose(np.asarray(paired), np.diag(ref[:, :5]), atol=1e-5)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_info_nce_value_and_gradients_equal_loop(with_negatives):
  rng = np.random.default_rng(1)
  b, k = 4, 2
  q, qm = token_batch(rng, b, 5, 6)
  d, dm = token_batch(rng, b, 7, 6)
  n, nm = token_batch(rng, b * k, 7, 6)
  scale = 3.0
  cands = np.concatenate([d, n]) if with_negatives else d
  cm = np.concatenate([dm, nm]) if with_negatives else dm
  ref_loss, ref_gq, ref_gc = ref_info_nce_and_grads(q, qm, cands, cm, scale)
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  negs = (f32(n.reshape(b, k, 7, 6)), f32(nm.reshape(b, k, 7))) if with_negatives else ()

  def loss(q, d, *neg):
    return li.maxsim_info_nce(q, f32(qm), d, f32(dm), *(neg[:1] + negs[1:]), scale=scale,
                              chunk=3)
  args = (f32(q), f32(d)) + negs[:1]
  value, grads = jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)
  assert float(value) == pytest.approx(ref_loss, abs=1e-5)
  np.testing.assert_allclose(np.asarray(grads[0]), ref_gq, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads[1]), ref_gc[:b], atol=1e-5)
  if with_negatives:
    np.testing.assert_allclose(np.asarray(grads[2]).reshape(b * k, 7, 6), ref_gc[b:],
                               atol=1e-5)


def test_distillation_equals_loop():
  rng = np.random.default_rng(2)
  b, n = 3, 4
  q, qm = token_batch(rng, b, 5, 6)
  docs, dm = token_batch(rng, b * n, 6, 6)
  teacher = rng.normal(size=(b, n)) * 3
  ref = 0.0
  for i in range(b):
    s = 2.0 * ref_maxsim(q[i:i + 1], qm[i:i + 1], docs[i * n:(i + 1) * n],
                         dm[i * n:(i + 1) * n])[0]
    t = teacher[i] / 0.5
    pt = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
    log_ps = s - s.max() - np.log(np.exp(s - s.max()).sum())
    ref += np.sum(pt * (np.log(pt) - log_ps)) / b
  ours = li.maxsim_distillation(
      jnp.asarray(q, jnp.float32), jnp.asarray(qm), jnp.asarray(docs.reshape(b, n, 6, 6),
                                                                jnp.float32),
      jnp.asarray(dm.reshape(b, n, 6)), jnp.asarray(teacher, jnp.float32), scale=2.0,
      temperature=0.5)
  assert float(ours) == pytest.approx(ref, abs=1e-5)


def test_cell_vectors_truncate_and_renormalise():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3, 4, 8))            # [batch, layers, tokens, width]
  ours = np.asarray(li.cell_vectors(jnp.asarray(x, jnp.float32), 1, 5))
  ref = x[:, 1, :, :5] / np.linalg.norm(x[:, 1, :, :5], axis=-1, keepdims=True)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_ring_on_eight_devices_equals_one_device(with_negatives):
  mesh = shd.make_mesh(dict(data=4, fsdp=2))
  rng = np.random.default_rng(4)
  b, k, tq, td, dim = 16, 2, 4, 6, 8
  q, qm = token_batch(rng, b, tq, dim)
  d, dm = token_batch(rng, b, td, dim)
  n, nm = token_batch(rng, b * k, td, dim)
  d[5], dm[5] = d[9], dm[9]                    # a duplicate across devices
  n, nm = n.reshape(b, k, td, dim), nm.reshape(b, k, td)
  args = [q, qm, d, dm] + ([n, nm] if with_negatives else [])
  put = lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s)  # noqa: E731
  batch_sh = NamedSharding(mesh, P(shd.BATCH_AXES))
  one = jax.devices()[0]

  def ring(q, d, *neg):
    return li.ring_maxsim_info_nce(q, sharded[1], d, sharded[3], *neg[:1],
                                   *sharded[5:6], mesh=mesh, scale=2.0, chunk=8)

  def plain(q, d, *neg):
    return li.maxsim_info_nce(q, single[1], d, single[3], *neg[:1], *single[5:6],
                              scale=2.0)
  sharded = [put(x, batch_sh) for x in args]
  single = [put(x, one) for x in args]
  diff = (0, 2) + ((4,) if with_negatives else ())
  v_ring, g_ring = jax.jit(jax.value_and_grad(ring, argnums=tuple(range(len(diff)))))(
      *[sharded[i] for i in diff])
  v_one, g_one = jax.jit(jax.value_and_grad(plain, argnums=tuple(range(len(diff)))))(
      *[single[i] for i in diff])
  assert float(v_ring) == pytest.approx(float(v_one), abs=1e-5)
  for a, c in zip(g_ring, g_one):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)
  cands = np.concatenate([d, n.reshape(-1, td, dim)]) if with_negatives else d
  cm = np.concatenate([dm, nm.reshape(-1, td)]) if with_negatives else dm
  assert float(v_ring) == pytest.approx(ref_info_nce_and_grads(q, qm, cands, cm, 2.0)[0],
                                        abs=1e-5)


def test_blocked_search_equals_loop_and_ranks_by_it():
  """Exhaustive MaxSim over a corpus a block at a time (the last block padded with
  empty documents), from ragged token matrices, against the loop."""
  from jaxembed.evals.late_interaction import maxsim_search, pad_tokens
  rng = np.random.default_rng(5)
  queries = [rng.normal(size=(2, t, 12)) for t in (3, 5, 4)]        # [layers, t, width]
  docs = [rng.normal(size=(2, t, 12)) for t in rng.integers(1, 9, size=11)]
  q, qm = pad_tokens(queries, 1, 8)
  d, dm = pad_tokens(docs, 1, 8)
  unit = lambda m: m[1, :, :8] / np.linalg.norm(m[1, :, :8], axis=-1, keepdims=True)  # noqa: E731
  ref = np.array([[sum(max(float(a @ b) for b in unit(y)) for a in unit(x)) for y in docs]
                  for x in queries])
  scores, top = maxsim_search(q, qm, d, dm, k=4, block=4)         # 11 = 4 + 4 + 3
  np.testing.assert_allclose(scores, np.sort(ref, axis=1)[:, ::-1][:, :4], atol=1e-5)
  np.testing.assert_array_equal(top, np.argsort(-ref, axis=1, kind="stable")[:, :4])


def test_scores_in_query_chunks_under_a_memory_budget_equal_one_pass():
  from jaxembed.evals.late_interaction import maxsim_scores
  rng = np.random.default_rng(6)
  q, qm = token_batch(rng, 7, 5, 8)
  d, dm = token_batch(rng, 10, 6, 8)
  whole = maxsim_scores(q, qm, d, dm, block=10, budget=2**30)
  # 4 documents x 5 x 6 tokens = 120 floats a query: a budget of 300 takes 2 queries.
  chunked = maxsim_scores(q, qm, d, dm, block=4, budget=300)
  np.testing.assert_allclose(chunked, whole, atol=1e-6)
  np.testing.assert_allclose(whole, ref_maxsim(q, qm, d, dm), atol=1e-5)
