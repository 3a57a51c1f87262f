"""Losses against slow, obvious float64 NumPy references: values, and gradients by
central finite differences of the reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.errors import ConfigError
from jaxembed.losses import build_cells, info_nce, matryoshka_loss


def ref_info_nce(q, d, scale, symmetric):
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  dn = d / np.linalg.norm(d, axis=1, keepdims=True)
  b = len(q)
  sim = [[scale * float(np.dot(qn[i], dn[j])) for j in range(b)] for i in range(b)]
  rows = sum(np.log(sum(np.exp(sim[i][j]) for j in range(b))) - sim[i][i] for i in range(b))
  loss = rows / b
  if symmetric:
    cols = sum(np.log(sum(np.exp(sim[j][i]) for j in range(b))) - sim[i][i]
               for i in range(b))
    loss = 0.5 * (loss + cols / b)
  return loss


def ref_softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def ref_matryoshka(ql, dl, cells, scale, symmetric, kl_weight, teacher_inputs=None):
  """teacher_inputs: the (ql, dl) the full-model teacher is computed from. A detached
  teacher is a constant, so finite differences must hold it fixed at the unperturbed
  inputs while perturbing the students."""
  def logits(a, b, layer, dim):
    q = a[:, layer - 1, :dim]
    d = b[:, layer - 1, :dim]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return scale * q @ d.T
  tq, td = teacher_inputs if teacher_inputs is not None else (ql, dl)
  full = logits(tq, td, ql.shape[1], ql.shape[2])
  total = 0.0
  wsum = sum(c[2] for c in cells)
  for layer, dim, w in cells:
    q, d = ql[:, layer - 1, :dim], dl[:, layer - 1, :dim]
    value = ref_info_nce(q, d, scale, symmetric)
    if kl_weight:
      lg = logits(ql, dl, layer, dim)
      kl = 0.0
      for i in range(len(q)):
        p, s = ref_softmax(full[i]), ref_softmax(lg[i])
        kl += sum(p[j] * (np.log(p[j]) - np.log(s[j])) for j in range(len(p)))
      value += kl_weight * kl / len(q)
    total += w / wsum * value
  return total


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    g[idx] = (f(xp) - f(xm)) / (2 * eps)
  return g


def batch_with_duplicates(rng, b, *shape):
  x = rng.normal(size=(b, *shape))
  x[3] = x[1]  # a repeated text: its "negative" equals a positive
  return x


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_info_nce_value_and_grad(symmetric, scale):
  rng = np.random.default_rng(0)
  q = batch_with_duplicates(rng, 6, 8)
  d = batch_with_duplicates(rng, 6, 8)
  loss, (gq, gd) = jax.value_and_grad(
      lambda a, b: info_nce(a, b, scale=scale, symmetric=symmetric), argnums=(0, 1))(
          jnp.asarray(q, jnp.float32), jnp.asarray(d, jnp.float32))
  np.testing.assert_allclose(float(loss), ref_info_nce(q, d, scale, symmetric),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      gq, numeric_grad(lambda x: ref_info_nce(x, d, scale, symmetric), q), atol=1e-5)
  np.testing.assert_allclose(
      gd, numeric_grad(lambda x: ref_info_nce(q, x, scale, symmetric), d), atol=1e-5)


@pytest.mark.parametrize("mode, kl_weight", [("grid", 0.0), ("pairs", 0.0), ("pairs", 0.5),
                                             ("mrl", 0.0), ("none", 0.0)])
def test_matryoshka_value_and_grad(mode, kl_weight):
  rng = np.random.default_rng(1)
  layers, hidden = 3, 8
  ql = batch_with_duplicates(rng, 5, layers, hidden)
  dl = batch_with_duplicates(rng, 5, layers, hidden)
  cells = build_cells(mode, num_layers=layers, hidden=hidden, layers=(1, 3), dims=(2, 4, 8),
                      pairs=((1, 2), (2, 4), (3, 8)))
  if mode == "grid":  # non-uniform per-cell weights
    cells = build_cells(mode, num_layers=layers, hidden=hidden, layers=(1, 3),
                        dims=(2, 4, 8), weights=[1, 2, 3, 4, 5, 6])
  as_tuples = [(c.layer, c.dim, c.weight) for c in cells]
  kw = dict(layer_index={1: 0, 2: 1, 3: 2}, scale=20.0, symmetric=True, kl_weight=kl_weight)

  def f(a, b):
    return matryoshka_loss(a, b, cells, **kw)[0]

  loss, (gq, gd) = jax.value_and_grad(f, argnums=(0, 1))(
      jnp.asarray(ql, jnp.float32), jnp.asarray(dl, jnp.float32))
  ref = lambda a, b: ref_matryoshka(a, b, as_tuples, 20.0, True, kl_weight, (ql, dl))
  np.testing.assert_allclose(float(loss), ref(ql, dl), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gq, numeric_grad(lambda x: ref(x, dl), ql), atol=1e-5)
  np.testing.assert_allclose(gd, numeric_grad(lambda x: ref(ql, x), dl), atol=1e-5)


def test_kl_teacher_is_detached():
  """With only the full cell in the KL term's student position, the KL term is 0 and
  its gradient must not flow through the teacher: the gradient of kl-only loss on the
  full-model coordinates comes from the student side alone."""
  rng = np.random.default_rng(2)
  ql = jnp.asarray(rng.normal(size=(4, 2, 6)), jnp.float32)
  dl = jnp.asarray(rng.normal(size=(4, 2, 6)), jnp.float32)
  small = build_cells("pairs", num_layers=2, hidden=6, pairs=((1, 3),))
  kw = dict(layer_index={1: 0, 2: 1}, scale=20.0)
  g_kl = jax.grad(lambda a: matryoshka_loss(a, dl, small, kl_weight=1.0, **kw)[0])(ql)
  g_plain = jax.grad(lambda a: matryoshka_loss(a, dl, small, kl_weight=0.0, **kw)[0])(ql)
  # The teacher lives at layer 2 (index 1); detached, it receives no gradient.
  np.testing.assert_array_equal(g_kl[:, 1], 0.0)
  assert np.abs(g_kl[:, 0] - g_plain[:, 0]).max() > 1e-4  # the KL term did act


def test_grid_covers_every_cell():
  cells = build_cells("grid", num_layers=6, hidden=384, layers=range(1, 7),
                      dims=(32, 64, 128, 256, 384))
  assert [(c.layer, c.dim) for c in cells] == list(
      itertools.product(range(1, 7), (32, 64, 128, 256, 384)))


@pytest.mark.parametrize("kw, match", [
    (dict(mode="grid", layers=(7,), dims=(8,)), r"layer 7 .*1\.\.6"),
    (dict(mode="grid", layers=(1,), dims=(512,)), r"dim 512 .*hidden size 384"),
    (dict(mode="pairs", pairs=((1, 8), (2, 16)), weights=[1.0]), "1 entries for 2 cells"),
    (dict(mode="nested"), r"valid values: \['none', 'mrl', 'grid', 'pairs'\]"),
])
def test_bad_cells_fail_with_valid_values(kw, match):
  mode = kw.pop("mode")
  with pytest.raises(ConfigError, match=match):
    build_cells(mode, num_layers=6, hidden=384, **kw)


def test_prefix_cosines_match_per_dim_normalisation():
  from jaxembed.losses.matryoshka import prefix_cosines
  rng = np.random.default_rng(4)
  q, c = rng.normal(size=(5, 12)), rng.normal(size=(7, 12))
  q[2, :4] = 0.0  # a zero prefix: clamped norm, cosine 0, as l2_normalize gives
  dims = (2, 4, 9, 12)
  got = np.asarray(prefix_cosines(jnp.asarray(q), jnp.asarray(c), dims))
  for n, m in enumerate(dims):
    qn = q[:, :m] / np.maximum(np.linalg.norm(q[:, :m], axis=1, keepdims=True), 1e-12)
    cn = c[:, :m] / np.maximum(np.linalg.norm(c[:, :m], axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(got[n], qn @ cn.T, atol=1e-6)
