"""Matryoshka objectives against float64 NumPy references: 2D Matryoshka (2DMSE) with
hard negatives and symmetry, MRL classification, layer weightings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.losses import (build_cells, layer_weight, mrl_classification_loss,
                             two_d_matryoshka_loss)
from loss_refs import float64, lse, ref_kl, unit  # noqa: F401 (float64 is autouse)
from test_losses import numeric_grad


def test_two_d_matryoshka():
  rng = np.random.default_rng(6)
  ql, dl = rng.normal(size=(5, 4, 8)), rng.normal(size=(5, 4, 8))
  key = jax.random.PRNGKey(7)
  f = lambda a, b: two_d_matryoshka_loss(a, b, key, dims=(2, 4), kl_weight=0.7,
                                         prior_layers_weight=0.5)
  (value, aux), (gq, gd) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
      jnp.asarray(ql), jnp.asarray(dl))
  layer, dim = int(aux["layer"]), int(aux["dim"])
  assert 1 <= layer <= 3 and dim in (2, 4)
  def ref(a, b, fixed):
    def logits(x, y, lyr, m):
      return 20.0 * unit(x[:, lyr - 1, :m]) @ unit(y[:, lyr - 1, :m]).T
    nce = lambda z: np.mean([lse(z[i]) - z[i, i] for i in range(len(z))])
    last = nce(logits(a, b, 4, 8)) + nce(logits(a, b, 4, dim))
    prior = nce(logits(a, b, layer, 8)) + nce(logits(a, b, layer, dim))
    kl = ref_kl(logits(a, b, layer, 8), logits(*fixed, 4, 8), 0.3) / 0.3 ** 2
    return last + 0.5 * prior + 0.7 * kl
  assert float(value) == pytest.approx(ref(ql, dl, (ql, dl)), abs=1e-8)
  np.testing.assert_allclose(gq, numeric_grad(lambda x: ref(x, dl, (ql, dl)), ql), atol=1e-5)
  np.testing.assert_allclose(gd, numeric_grad(lambda x: ref(ql, x, (ql, dl)), dl), atol=1e-5)
  # Different keys sample different sub-models.
  seen = {tuple(int(v) for v in (two_d_matryoshka_loss(
      jnp.asarray(ql), jnp.asarray(dl), jax.random.PRNGKey(s), dims=(2, 4))[1][k]
      for k in ("layer", "dim"))) for s in range(30)}
  assert len(seen) > 3


@pytest.mark.parametrize("symmetric", [False, True])
def test_two_d_matryoshka_hard_negatives_and_symmetric(symmetric):
  """Hard negatives are candidates for every query in all four InfoNCE terms and in the
  KL's distributions; symmetric adds the document->query direction (batch columns only)."""
  rng = np.random.default_rng(9)
  ql, dl = rng.normal(size=(4, 3, 6)), rng.normal(size=(4, 3, 6))
  nl = rng.normal(size=(4, 2, 3, 6))
  key = jax.random.PRNGKey(3)
  f = lambda a, b, n: two_d_matryoshka_loss(a, b, key, dims=(2, 3), kl_weight=0.6,
                                            neg_layers=n, symmetric=symmetric)
  (value, aux), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
      jnp.asarray(ql), jnp.asarray(dl), jnp.asarray(nl))
  layer, dim = int(aux["layer"]), int(aux["dim"])
  def ref(a, b, n, fixed):
    def logits(x, y, neg, lyr, m):
      cands = np.concatenate([unit(y[:, lyr - 1, :m]),
                              unit(neg[:, :, lyr - 1, :m]).reshape(-1, m)])
      return 20.0 * unit(x[:, lyr - 1, :m]) @ cands.T
    def nce(z):
      bsz = len(z)
      forward = np.mean([lse(z[i]) - z[i, i] for i in range(bsz)])
      if not symmetric:
        return forward
      backward = np.mean([lse(z[:bsz, j]) - z[j, j] for j in range(bsz)])
      return 0.5 * (forward + backward)
    total = 0.0
    for lyr, m in ((3, 6), (3, dim), (layer, 6), (layer, dim)):
      total += nce(logits(a, b, n, lyr, m))
    kl = ref_kl(logits(a, b, n, layer, 6), logits(*fixed, 3, 6), 0.3) / 0.3 ** 2
    return total + 0.6 * kl
  fixed = (ql, dl, nl)
  assert float(value) == pytest.approx(ref(ql, dl, nl, fixed), abs=1e-8)
  for arg, g in enumerate(grads):
    def perturbed(x, arg=arg):
      args = [ql, dl, nl]
      args[arg] = x
      return ref(*args, fixed)
    np.testing.assert_allclose(g, numeric_grad(perturbed, (ql, dl, nl)[arg]), atol=1e-5)
  # The negatives take part: without them the value is different.
  without = two_d_matryoshka_loss(jnp.asarray(ql), jnp.asarray(dl), key, dims=(2, 3),
                                  kl_weight=0.6, symmetric=symmetric)[0]
  assert abs(float(without) - float(value)) > 1e-3


def test_two_d_matryoshka_through_the_registry_uses_negatives_and_symmetric():
  """loss.name=2dmse passes the batch's hard negatives and loss.symmetric through."""
  from jaxembed import defaults
  from jaxembed.losses.registry import make_loss
  rng = np.random.default_rng(10)
  ql, dl = jnp.asarray(rng.normal(size=(4, 2, 8))), jnp.asarray(rng.normal(size=(4, 2, 8)))
  nl = jnp.asarray(rng.normal(size=(4, 1, 2, 8)))
  key = jax.random.PRNGKey(0)
  values = {}
  for symmetric in (False, True):
    cfg = defaults.base_config().loss
    cfg.name, cfg.symmetric, cfg.kl_weight = "2dmse", symmetric, 1.0
    cfg.matryoshka.dims, cfg.matryoshka.layers = (4, 8), (1, 2)
    fn = make_loss(cfg, num_layers=2, hidden=8)
    for negs in (None, nl):
      got = float(fn(ql, dl, negs, rng=key)[0])
      want = float(two_d_matryoshka_loss(ql, dl, key, dims=(4, 8), scale=cfg.scale,
                                         kl_weight=1.0, kl_temperature=cfg.kl_temperature,
                                         neg_layers=negs, symmetric=symmetric)[0])
      assert got == pytest.approx(want, rel=1e-9)
      values[symmetric, negs is None] = got
  assert len({round(v, 6) for v in values.values()}) == 4


@pytest.mark.parametrize("efficient", [True, False])
def test_mrl_classification(efficient):
  rng = np.random.default_rng(8)
  z, y = rng.normal(size=(6, 8)), rng.integers(0, 3, size=6)
  dims, weights = (2, 4, 8), (1.0, 0.5, 2.0)
  if efficient:
    heads = (rng.normal(size=(8, 3)), rng.normal(size=3))
    head_of = lambda h, n, m: (h[0][:m], h[1])
  else:
    heads = [(rng.normal(size=(m, 3)), rng.normal(size=3)) for m in dims]
    head_of = lambda h, n, m: h[n]
  def ref(feat):
    total = 0.0
    for n, (m, c) in enumerate(zip(dims, weights)):
      w, b = head_of(heads, n, m)
      logits = feat[:, :m] @ w + b
      total += c * np.mean([lse(logits[i]) - logits[i, y[i]] for i in range(len(y))])
    return total
  f = lambda feat: mrl_classification_loss(feat, jnp.asarray(y), jax.tree.map(jnp.asarray, heads),
                                           dims, weights, efficient=efficient)
  value, g = jax.value_and_grad(f)(jnp.asarray(z))
  assert float(value) == pytest.approx(ref(z), abs=1e-9)
  np.testing.assert_allclose(g, numeric_grad(ref, z), atol=1e-6)


def test_layer_weightings():
  assert [layer_weight(l, 4, "linear") for l in (1, 4)] == [0.25, 1.0]
  assert layer_weight(1, 6, "log") == pytest.approx(np.log(2) / np.log(7))
  cells = build_cells("grid", num_layers=4, hidden=8, layers=(1, 4), dims=(8,),
                      weights=[2.0, 2.0], layer_weighting="linear")
  assert [c.weight for c in cells] == [0.5, 2.0]
