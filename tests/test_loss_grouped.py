"""Grouped objectives against float64 NumPy references: several positives per anchor
(softmax and sigmoid), and the grouped objectives through the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed import defaults
from jaxembed.losses import info_nce, multi_positive_pairs, sigmoid_loss
from jaxembed.losses.registry import BatchInputs, grouped_names, make_loss
from loss_refs import float64, lse, unit  # noqa: F401 (float64 is autouse)
from test_losses import numeric_grad


def ref_multi_positive(q, d, n, groups, scale, symmetric):
  """Slow loop: for each query, the mean over its group's in-batch documents of
  -log softmax over every candidate; symmetric: the same from each document to the
  queries; the mean over all (query, positive) pairs."""
  qn, dn = unit(q), unit(d)
  cands = dn if n is None else np.concatenate([dn, unit(n).reshape(-1, n.shape[-1])])
  b = len(q)
  def direction(rows, cols, positives):
    terms = []
    for i in range(len(rows)):
      z = lse([scale * float(rows[i] @ c) for c in cols])
      terms += [z - scale * float(rows[i] @ cols[j]) for j in positives(i)]
    return sum(terms) / len(terms)
  same = lambda i: [j for j in range(b) if groups[j] == groups[i]]
  loss = direction(qn, cands, same)
  if symmetric:
    loss = 0.5 * (loss + direction(dn, qn, same))
  return loss


@pytest.mark.parametrize("symmetric, with_negatives", [(False, False), (True, False),
                                                      (False, True), (True, True)])
def test_multi_positive_pairs(symmetric, with_negatives):
  """Same-group pairs are each other's positives: value and gradients against the loop;
  with distinct groups it is InfoNCE."""
  rng = np.random.default_rng(11)
  q, d = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  n = rng.normal(size=(6, 2, 5)) if with_negatives else None
  groups = np.array([0, 1, 0, 2, 1, 0])
  fn = lambda q, d: multi_positive_pairs(q, d, None if n is None else jnp.asarray(n),
                                         groups=jnp.asarray(groups), scale=7.0,
                                         symmetric=symmetric)
  ref = lambda q, d: ref_multi_positive(q, d, n, groups, 7.0, symmetric)
  assert float(fn(jnp.asarray(q), jnp.asarray(d))) == pytest.approx(ref(q, d), rel=1e-9)
  gq, gd = jax.grad(fn, argnums=(0, 1))(jnp.asarray(q), jnp.asarray(d))
  np.testing.assert_allclose(gq, numeric_grad(lambda x: ref(x, d), q), atol=1e-5)
  np.testing.assert_allclose(gd, numeric_grad(lambda x: ref(q, x), d), atol=1e-5)
  negs = None if n is None else jnp.asarray(n)
  plain = multi_positive_pairs(jnp.asarray(q), jnp.asarray(d), negs, scale=7.0,
                               symmetric=symmetric)
  assert float(plain) == pytest.approx(float(info_nce(
      jnp.asarray(q), jnp.asarray(d), negs, scale=7.0, symmetric=symmetric)), rel=1e-9)
  assert abs(float(plain) - ref(q, d)) > 1e-3, "the groups must change the loss"


def test_sigmoid_loss_with_groups():
  """SigLIP with groups: z = +1 for every same-group in-batch pair, -1 otherwise and
  for hard negatives; a loop over pairs in float64."""
  rng = np.random.default_rng(12)
  q, d, n = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 1, 4))
  groups = np.array([3, 3, 1, 0, 1])
  qn, cands = unit(q), np.concatenate([unit(d), unit(n).reshape(-1, 4)])
  want = 0.0
  for i in range(5):
    for j in range(len(cands)):
      z = 1.0 if j < 5 and groups[j] == groups[i] else -1.0
      want -= np.log(1 / (1 + np.exp(-z * (10.0 * float(qn[i] @ cands[j]) - 10.0))))
  got = sigmoid_loss(jnp.asarray(q), jnp.asarray(d), jnp.asarray(n), log_scale=np.log(10.0),
                     bias=-10.0, groups=jnp.asarray(groups))
  assert float(got) == pytest.approx(want / 5, rel=1e-9)


def test_grouped_objectives_through_the_registry():
  """loss.name=multi_positive_info_nce and sigmoid read the batch's groups per cell;
  info_nce (not grouped) ignores them."""
  assert set(grouped_names()) == {"multi_positive_info_nce", "sigmoid"}
  rng = np.random.default_rng(13)
  ql, dl = jnp.asarray(rng.normal(size=(4, 2, 8))), jnp.asarray(rng.normal(size=(4, 2, 8)))
  groups = jnp.asarray([0, 0, 1, 1])
  cfg = defaults.base_config().loss
  cfg.name, cfg.symmetric = "multi_positive_info_nce", True
  cfg.matryoshka.mode, cfg.matryoshka.dims, cfg.matryoshka.layers = "grid", (4, 8), (1, 2)
  fn = make_loss(cfg, num_layers=2, hidden=8)
  want = np.mean([float(multi_positive_pairs(ql[:, l, :k], dl[:, l, :k], groups=groups,
                                             scale=cfg.scale, symmetric=True))
                  for l in range(2) for k in (4, 8)])
  assert float(fn(ql, dl, inputs=BatchInputs(groups=groups))[0]) == pytest.approx(want, rel=1e-9)
  assert float(fn(ql, dl)[0]) != pytest.approx(want, rel=1e-3)
  cfg.name = "info_nce"
  plain = make_loss(cfg, num_layers=2, hidden=8)
  assert float(plain(ql, dl, inputs=BatchInputs(groups=groups))[0]) == float(plain(ql, dl)[0])
