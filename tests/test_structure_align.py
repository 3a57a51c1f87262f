"""STRUCTURE's regulariser against a float64 NumPy loop, its invariance to rotations
of the aligned space, and the alignment fit (with and without it) on synthetic
two-modality data with a shared latent."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.errors import ConfigError
from jaxembed.losses.structure import structure_regularizer
from jaxembed.train.align import fit_alignment


def ref_regularizer(z, h, levels, temperature):
  def walk(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    b = len(x)
    p = np.zeros((b, b))
    for i in range(b):
      e = np.array([np.exp(x[i] @ x[j] / temperature) if j != i else 0.0 for j in range(b)])
      p[i] = e / e.sum()
    return p

  def js(a, c):
    out = 0.0
    for ra, rc in zip(a, c):
      m = 0.5 * (ra + rc)
      kl = lambda r: sum(v * np.log(v / w) for v, w in zip(r, m) if v > 0)
      out += 0.5 * kl(ra) + 0.5 * kl(rc)
    return out / len(a)

  p, q = walk(z.astype(np.float64)), walk(h.astype(np.float64))
  return np.mean([js(np.linalg.matrix_power(p, l), np.linalg.matrix_power(q, l))
                  for l in range(1, levels + 1)])


def test_regularizer_matches_numpy_and_ignores_rotations():
  rng = np.random.default_rng(0)
  z, h = rng.normal(size=(7, 5)), rng.normal(size=(7, 3))
  got = float(structure_regularizer(jnp.asarray(z), jnp.asarray(h), levels=3,
                                    temperature=0.5))
  assert got == pytest.approx(ref_regularizer(z, h, 3, 0.5), rel=1e-4)
  rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  same = float(structure_regularizer(jnp.asarray(z), jnp.asarray(z @ rotation), levels=2,
                                     temperature=0.5))
  assert abs(same) < 1e-6 < got


def shared_latent(n, rng):
  latent = rng.normal(size=(n, 6))
  to_img, to_txt = rng.normal(size=(6, 20)), rng.normal(size=(6, 12))
  img = np.tanh(latent @ to_img) + 0.1 * rng.normal(size=(n, 20))
  txt = latent @ to_txt + 0.1 * rng.normal(size=(n, 12))
  return img.astype(np.float32), txt.astype(np.float32)


def top1(a, b):
  return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))


def test_alignment_learns_pairs_and_the_regulariser_keeps_structure():
  rng = np.random.default_rng(1)
  img, txt = shared_latent(600, rng)
  train, test = slice(0, 400), slice(400, 600)
  init = fit_alignment(img[train], txt[train], dim=8, iterations=1, learning_rate=0.0)
  plain = fit_alignment(img[train], txt[train], dim=8, iterations=300, batch_size=128,
                        learning_rate=1e-2)
  kept = fit_alignment(img[train], txt[train], dim=8, iterations=300, batch_size=128,
                       learning_rate=1e-2, structure_weight=10.0, temperature=0.5)
  for fitted in (plain, kept):
    assert top1(fitted.images(img[test]), fitted.texts(txt[test])) > \
        top1(init.images(img[test]), init.texts(txt[test])) + 0.2
  reg = lambda a: float(structure_regularizer(jnp.asarray(img[test]),
                                              jnp.asarray(a.images(img[test])),
                                              temperature=0.5))
  assert reg(kept) < reg(plain)


def test_bad_inputs_are_named():
  with pytest.raises(ConfigError, match="3 image features but 2"):
    fit_alignment(np.ones((3, 2)), np.ones((2, 2)))
  with pytest.raises(ConfigError, match="structure_weight=-1"):
    fit_alignment(np.ones((3, 2)), np.ones((3, 2)), structure_weight=-1)
