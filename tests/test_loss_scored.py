"""Scored-pair and distillation objectives against float64 NumPy references: CoSENT,
AnglE, the KL between in-batch score distributions (detached teacher), multi-exit
self-distillation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.losses import (angle_loss, cosent_loss, kl_scores,
                             multi_exit_self_distillation)
from jaxembed.losses.scored import angle_scores
from loss_refs import float64, lse, ref_kl, unit  # noqa: F401 (float64 is autouse)
from test_losses import numeric_grad


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


def test_self_distillation_weight_control():
  """teacher='none': the KL terms' weight goes to the shallower exits' own InfoNCE."""
  rng = np.random.default_rng(6)
  ql, dl = rng.normal(size=(5, 3, 6)), rng.normal(size=(5, 3, 6))
  idx = {1: 0, 2: 1, 3: 2}
  nce = lambda z: np.mean([lse(z[i]) - z[i, i] for i in range(len(z))])
  per = {l: nce(20.0 * unit(ql[:, idx[l]]) @ unit(dl[:, idx[l]]).T) for l in (1, 2, 3)}
  want = np.mean(list(per.values())) + 0.5 * np.mean([per[1], per[2]])
  got = multi_exit_self_distillation(jnp.asarray(ql), jnp.asarray(dl), (1, 2, 3),
                                     layer_index=idx, distill_weight=0.5, teacher="none")[0]
  assert float(got) == pytest.approx(want, abs=1e-8)
  with pytest.raises(ValueError, match="'next', 'deepest', 'none'"):
    multi_exit_self_distillation(jnp.asarray(ql), jnp.asarray(dl), (1, 2, 3),
                                 layer_index=idx, teacher="other")
