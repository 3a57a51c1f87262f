"""The contrastive loss family against slow float64 NumPy references: values,
gradients by central differences, in-batch and hard negatives, margins, learnable
temperature, mixed negatives. The other objectives: test_loss_scored.py (CoSENT,
AnglE, KL, multi-exit), test_loss_matryoshka.py, test_loss_grouped.py."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.losses import (contrastive_loss, mix_hard_negatives)
from loss_refs import float64, lse, unit  # noqa: F401 (float64 is autouse)
from test_losses import numeric_grad


def ref_contrastive(q, d, n, scale, directions, pos_ids, cand_ids, margin, gamma, qneg,
                    in_batch=True):
  qn, dn = unit(q), unit(d)
  cands = dn if n is None else np.concatenate([dn, unit(n).reshape(-1, n.shape[-1])])
  b = len(q)
  total = 0.0
  for i in range(b):
    pos = float(qn[i] @ dn[i])
    terms = [scale * pos]
    def add(cos, same_text):
      if same_text or (margin is not None and cos > pos + margin):
        return
      terms.append(scale * cos)
    if "qd" in directions:
      for j in range(len(cands)):
        if j != i and (in_batch or j >= b):
          add(float(qn[i] @ cands[j]), pos_ids is not None and cand_ids[j] == pos_ids[i])
    if qneg is not None:
      for s in unit(qneg[i]):
        add(float(qn[i] @ s), False)
    for name, a, bvec in (("dq", dn, qn), ("qq", qn, qn), ("dd", dn, dn)):
      if name in directions:
        for j in range(b):
          if j != i:
            own = (dn[i] @ qn[j]) if name == "dq" else (a[i] @ bvec[j])
            add(float(own), pos_ids is not None and pos_ids[j] == pos_ids[i])
    nll = lse(terms) - scale * pos
    if gamma:
      nll = (1 - np.exp(-nll)) ** gamma * nll
    total += nll
  return total / b


CASES = [
    dict(directions=("qd",)),
    dict(directions=("qd", "dq")),
    dict(directions=("qd", "qq", "dd")),
    dict(directions=("qd", "dq", "qq", "dd"), negatives=True),
    dict(directions=("qd",), negatives=True, ids=True),
    dict(directions=("qd", "dq"), margin=0.1, negatives=True),
    dict(directions=("qd",), gamma=2.0),
    dict(directions=("qd",), qneg=True),
    dict(directions=("qd",), negatives=True, in_batch=False),
    dict(directions=("qd",), negatives=True, ids=True, qneg=True, in_batch=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_contrastive_loss(case):
  rng = np.random.default_rng(0)
  b, k, dim = 5, 2, 6
  q, d = rng.normal(size=(b, dim)), rng.normal(size=(b, dim))
  n = rng.normal(size=(b, k, dim)) if case.get("negatives") else None
  d[3] = d[1]  # the same text twice: a false negative for each other
  pos_ids = cand_ids = None
  if case.get("ids"):
    pos_ids = np.array([0, 1, 2, 1, 4])
    cand_ids = np.concatenate([pos_ids, 100 + np.arange(b * k)])
    cand_ids[b + 3] = 2  # a hard negative that is query 2's positive text
  qneg = rng.normal(size=(b, 3, dim)) if case.get("qneg") else None
  kw = dict(scale=20.0, directions=case["directions"], margin=case.get("margin"),
            focal_gamma=case.get("gamma", 0.0), in_batch=case.get("in_batch", True))
  args = dict(positive_ids=None if pos_ids is None else jnp.asarray(pos_ids),
              candidate_ids=None if cand_ids is None else jnp.asarray(cand_ids),
              query_negatives=None if qneg is None else jnp.asarray(qneg))
  f = lambda a, c: contrastive_loss(a, c, None if n is None else jnp.asarray(n), **kw, **args)
  value, (gq, gd) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(q), jnp.asarray(d))
  ref = lambda a, c: ref_contrastive(a, c, n, 20.0, case["directions"], pos_ids, cand_ids,
                                     case.get("margin"), case.get("gamma", 0.0), qneg,
                                     case.get("in_batch", True))
  assert float(value) == pytest.approx(ref(q, d), abs=1e-8)
  np.testing.assert_allclose(gq, numeric_grad(lambda x: ref(x, d), q), atol=1e-5)
  np.testing.assert_allclose(gd, numeric_grad(lambda x: ref(q, x), d), atol=1e-5)


def test_without_in_batch_negatives_other_pairs_do_not_count():
  """in_batch=False: moving another pair's texts leaves query 0's loss unchanged (it
  changes with in-batch negatives); without hard negatives, or with other directions,
  it is refused."""
  rng = np.random.default_rng(3)
  q, d, n = (jnp.asarray(rng.normal(size=s)) for s in ((4, 6), (4, 6), (4, 2, 6)))
  moved = d.at[1:].set(q[0])       # the other pairs' positives right on query 0
  for in_batch, changes in ((False, False), (True, True)):
    f = lambda dd: contrastive_loss(q, dd, n, in_batch=in_batch, per_example=True)[0]
    assert (abs(float(f(moved)) - float(f(d))) > 1e-3) == changes
  with pytest.raises(ValueError, match="no hard negatives"):
    contrastive_loss(q, d, None, in_batch=False)
  with pytest.raises(ValueError, match="other pairs"):
    contrastive_loss(q, d, n, directions=("qd", "dq"), in_batch=False)
  from jaxembed import defaults
  from jaxembed.errors import ConfigError
  from jaxembed.losses.registry import make_loss
  cfg = defaults.base_config().loss
  cfg.in_batch_negatives = False
  cfg.matryoshka.mode = "none"
  with pytest.raises(ConfigError, match="in_batch_negatives=False works with"):
    make_loss(cfg, num_layers=2, hidden=6)
  cfg.name = "contrastive"
  got = make_loss(cfg, num_layers=2, hidden=6)(q[:, None].repeat(2, 1), d[:, None].repeat(2, 1),
                                               n[:, :, None].repeat(2, 2))[0]
  assert float(got) == pytest.approx(float(contrastive_loss(q, d, n, in_batch=False)), rel=1e-9)


def test_learnable_temperature_gradient():
  rng = np.random.default_rng(1)
  q, d = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
  g = jax.grad(lambda t: contrastive_loss(jnp.asarray(q), jnp.asarray(d), scale=jnp.exp(t)))(
      jnp.log(20.0))
  ref = lambda t: ref_contrastive(q, d, None, np.exp(t), ("qd",), None, None, None, 0, None)
  eps = 1e-6
  assert float(g) == pytest.approx((ref(np.log(20) + eps) - ref(np.log(20) - eps)) / (2 * eps),
                                   abs=1e-6)


def test_mixed_negatives_are_mixtures_of_the_hardest_and_constant():
  rng = np.random.default_rng(2)
  q, d = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  mixed = np.asarray(mix_hard_negatives(jnp.asarray(q), jnp.asarray(d), jax.random.PRNGKey(0),
                                        n_hardest=3, n_synthetic=4))
  assert mixed.shape == (6, 4, 8)
  np.testing.assert_allclose(np.linalg.norm(mixed, axis=-1), 1.0, atol=1e-9)
  qn, dn = unit(q), unit(d)
  for i in range(6):
    scores = dn @ qn[i]
    scores[i] = -np.inf
    hardest = dn[np.argsort(-scores)[:3]]
    for s in mixed[i]:  # s = normalize(a x + (1 - a) y) for some hardest x, y, a in [0, 1]
      ok = False
      for x, y in itertools.combinations_with_replacement(hardest, 2):
        coef, *_ = np.linalg.lstsq(np.stack([x, y], 1), s, rcond=None)
        if np.allclose(np.stack([x, y], 1) @ coef, s, atol=1e-8) and (coef >= -1e-9).all():
          ok = True
      assert ok
  g = jax.grad(lambda a: jnp.sum(mix_hard_negatives(a, jnp.asarray(d), jax.random.PRNGKey(0))))(
      jnp.asarray(q))
  np.testing.assert_array_equal(g, 0.0)
