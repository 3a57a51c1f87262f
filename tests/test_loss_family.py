"""The wider loss family against slow float64 NumPy references: values, gradients by
central differences, and detached teachers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.losses import (angle_loss, build_cells, contrastive_loss, cosent_loss,
                             kl_scores, layer_weight, mix_hard_negatives,
                             mrl_classification_loss, multi_exit_self_distillation,
                             two_d_matryoshka_loss)
from jaxembed.losses.scored import angle_scores
from test_losses import numeric_grad



@pytest.fixture(autouse=True)
def float64():
  """float64 on both sides, so values compare to 1e-8; restored for other modules."""
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def lse(values):
  values = np.asarray(values, np.float64)
  m = values.max()
  return m + np.log(np.exp(values - m).sum())


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


def ref_rank(scores, grades):
  terms = [0.0] + [scores[j] - scores[i] for i in range(len(scores))
                   for j in range(len(scores)) if grades[i] > grades[j]]
  return lse(terms)


def test_cosent_and_angle():
  rng = np.random.default_rng(3)
  u, v = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  grades = np.array([0.0, 1.0, 1.0, 3.0, 2.5, 5.0])  # with a tie
  cos = lambda a, b: 20.0 * np.sum(unit(a) * unit(b), -1)
  def ang(a, b):  # NumPy complex arithmetic, independent of the real-valued JAX code
    za, zb = a[:, :4] + 1j * a[:, 4:], b[:, :4] + 1j * b[:, 4:]
    # AnglE divides by the whole vector's squared norm, not element-wise
    quotient = za * np.conj(zb) / np.sum(np.abs(zb) ** 2, axis=1, keepdims=True)
    quotient *= (np.linalg.norm(b, axis=1) / np.linalg.norm(a, axis=1))[:, None]
    return np.abs(quotient.real.sum(1) + quotient.imag.sum(1))
  np.testing.assert_allclose(angle_scores(jnp.asarray(u), jnp.asarray(v)), ang(u, v), rtol=1e-10)
  for loss, score in ((cosent_loss, cos), (angle_loss, lambda a, b: 20.0 * ang(a, b))):
    f = lambda a, b: loss(a, b, jnp.asarray(grades), tau=20.0)
    value, (gu, gv) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(u), jnp.asarray(v))
    ref = lambda a, b: ref_rank(score(a, b), grades)
    assert float(value) == pytest.approx(ref(u, v), abs=1e-8)
    np.testing.assert_allclose(gu, numeric_grad(lambda x: ref(x, v), u), atol=1e-5)
    np.testing.assert_allclose(gv, numeric_grad(lambda x: ref(u, x), v), atol=1e-5)


def ref_kl(student, teacher, t):
  total = 0.0
  for s_row, t_row in zip(student, teacher):
    p = np.exp(t_row / t - lse(t_row / t))
    log_q = s_row / t - lse(s_row / t)
    total += np.sum(p * (np.log(p) - log_q))
  return total / len(student) * t * t


def test_kl_scores_value_gradient_and_detached_teacher():
  rng = np.random.default_rng(4)
  s, t = rng.normal(size=(4, 7)) * 3, rng.normal(size=(4, 7)) * 3
  value, (gs, gt) = jax.value_and_grad(lambda a, b: kl_scores(a, b, temperature=2.0),
                                       argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
  assert float(value) == pytest.approx(ref_kl(s, t, 2.0), abs=1e-9)
  np.testing.assert_allclose(gs, numeric_grad(lambda x: ref_kl(x, t, 2.0), s), atol=1e-6)
  np.testing.assert_array_equal(gt, 0.0)  # the teacher is a constant


def test_multi_exit_self_distillation():
  rng = np.random.default_rng(5)
  ql, dl = rng.normal(size=(5, 3, 6)), rng.normal(size=(5, 3, 6))
  idx = {1: 0, 2: 1, 3: 2}
  def ref(a, b, teacher_from):
    logits = {l: 20.0 * unit(a[:, idx[l]]) @ unit(b[:, idx[l]]).T for l in (1, 2, 3)}
    fixed = {l: 20.0 * unit(teacher_from[0][:, idx[l]]) @ unit(teacher_from[1][:, idx[l]]).T
             for l in (1, 2, 3)}
    nce = lambda z: np.mean([lse(z[i]) - z[i, i] for i in range(len(z))])
    contrast = np.mean([nce(logits[l]) for l in (1, 2, 3)])
    distill = np.mean([ref_kl(logits[1], fixed[2], 1.0), ref_kl(logits[2], fixed[3], 1.0)])
    return contrast + 0.5 * distill
  f = lambda a, b: multi_exit_self_distillation(a, b, (1, 2, 3), layer_index=idx,
                                                distill_weight=0.5)[0]
  value, (gq, gd) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(ql), jnp.asarray(dl))
  assert float(value) == pytest.approx(ref(ql, dl, (ql, dl)), abs=1e-8)
  # Teachers fixed at the unperturbed inputs: that is what stop-gradient means.
  np.testing.assert_allclose(gq, numeric_grad(lambda x: ref(x, dl, (ql, dl)), ql), atol=1e-5)
  np.testing.assert_allclose(gd, numeric_grad(lambda x: ref(ql, x, (ql, dl)), dl), atol=1e-5)


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
  from jaxembed.losses import info_nce, multi_positive_pairs
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
  from jaxembed.losses import sigmoid_loss
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
  from jaxembed import defaults
  from jaxembed.losses import multi_positive_pairs
  from jaxembed.losses.registry import grouped_names, make_loss
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
  assert float(fn(ql, dl, groups=groups)[0]) == pytest.approx(want, rel=1e-9)
  assert float(fn(ql, dl)[0]) != pytest.approx(want, rel=1e-3)
  cfg.name = "info_nce"
  plain = make_loss(cfg, num_layers=2, hidden=8)
  assert float(plain(ql, dl, groups=groups)[0]) == float(plain(ql, dl)[0])
