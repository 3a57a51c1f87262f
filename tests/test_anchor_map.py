"""The anchor through a width map (loss.distill.anchor_map='procrustes',
jaxembed/train/anchor_map.py): the fit against a known map and scipy's Procrustes, the
settings it refuses by name, and, with all-mpnet-base-v2 teaching the tiny student, the
map fitted, stored and read back and the step's anchor term against NumPy."""

import jax
import numpy as np
import pytest

from jaxembed import sharding as shd, train
from jaxembed.errors import ConfigError
from test_teacher_distill import (ANCHORS, MPNET, POSITIVES, _texts_batch, _unit,
                                  relational_kd_reference)


def test_procrustes_recovers_a_known_orthogonal_map_and_beats_others():
  """A teacher space that is the student's turned by a known map with orthonormal
  columns (widths 12 -> 6, and 6 -> 12) gives that map back; with noise, the fit's
  residual is below that of any other orthonormal map tried, and scipy's square
  Procrustes solution agrees at equal widths."""
  import scipy.linalg
  from jaxembed.train.anchor_map import mean_cosine, procrustes
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  for d_t, d_s in ((12, 6), (6, 12)):
    m = q[:d_t, :d_s] if d_t < d_s else q[:, :d_s]   # orthonormal rows or columns
    if d_t < d_s:                        # m keeps norms: the student is the teacher, turned
      teacher = _unit(rng.normal(size=(200, d_t)))
      student = teacher @ m
    else:                                # the teacher lies in m's span of its space
      student = _unit(rng.normal(size=(200, d_s)))
      teacher = student @ m.T
    w = procrustes(teacher * rng.uniform(0.5, 2, size=(200, 1)), student)
    np.testing.assert_allclose(w, m, atol=1e-9)
    gram = w.T @ w if d_t >= d_s else w @ w.T
    np.testing.assert_allclose(gram, np.eye(min(d_t, d_s)), atol=1e-9)
  teacher, student = rng.normal(size=(300, 12)), rng.normal(size=(300, 8))
  w = procrustes(teacher, student)
  loss = lambda m: np.sum((_unit(teacher) @ m - _unit(student)) ** 2)  # noqa: E731
  for _ in range(200):
    other, _ = np.linalg.qr(rng.normal(size=(12, 8)))
    assert loss(w) <= loss(other)
    assert mean_cosine(teacher, student, w) >= mean_cosine(teacher, student, other)
  square = rng.normal(size=(300, 8))
  want, _ = scipy.linalg.orthogonal_procrustes(_unit(square), _unit(student))
  np.testing.assert_allclose(procrustes(square, student), want, atol=1e-9)


@pytest.mark.parametrize("fields, match", [
    ({"anchor_map": "pca"}, r"loss.distill.anchor_map='pca': one of"),
    ({"anchor_map": "procrustes", "anchor_weight": 0.0}, "anchor_weight is 0"),
    ({"anchor_map": "procrustes", "teacher": ""}, "student's own pretrained model"),
    ({"anchor_map": "procrustes", "anchor_map_texts": 1}, "anchor_map_texts=1"),
])
def test_bad_anchor_map_settings_are_named(smoke_config, fields, match):
  from conftest import MINILM
  config = smoke_config()
  config.loss.distill.update(weight=1.0, anchor_weight=1.0, teacher=MINILM)
  config.loss.distill.update(**fields)
  with pytest.raises(ConfigError, match=match):
    train.setup(config, "/nonexistent-unused")


def test_another_teacher_anchors_through_a_fitted_map(smoke_config, tmp_path, monkeypatch):
  """all-mpnet-base-v2 (768 dims) anchors the tiny student (32 dims) through
  loss.distill.anchor_map='procrustes': the map is the Procrustes fit of MPNet's
  vectors of the run's sample texts (jaxembed.load(MPNet).encode) to the student's
  initial vectors, it is written to the workdir and read back by a second setup
  (no refit), and the step's anchor term at step 0 is a NumPy computation's over the
  mapped teacher, while the KL still reads the teacher's own 768 dims."""
  import jaxembed
  from conftest import require_weights
  from jaxembed.train import anchor_map
  config = smoke_config(**{"train.dropout": False})
  config.loss.distill.update(weight=1.0, anchor_weight=1.0, anchor_map="procrustes",
                             anchor_map_texts=48, teacher=require_weights(MPNET))
  workdir = str(tmp_path / "run")
  run = train.setup(config, workdir, devices=jax.devices()[:2])
  assert run.other_teacher.mapped and 40 <= len(run.anchor_texts) <= 56
  teacher_model = jaxembed.load(MPNET)
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  texts = list(run.anchor_texts)
  t = teacher_model.encode(texts, normalize=False)
  s = train.step.encode_pairs(run.train_model, state.params, _texts_batch(run, texts, texts),
                              None, deterministic=True)[0]
  s = np.asarray(s)[:, -1]
  w = np.asarray(run.teacher_params()["anchor_map"])
  assert w.shape == (768, 32)
  np.testing.assert_allclose(w.T @ w, np.eye(32), atol=1e-5)
  # the fit's objective is the float64 fit's (its entries may differ where singular
  # values are close; what the anchor sees is the mapped vectors' fit)
  residual = lambda m: np.sum((_unit(t) @ m - _unit(s)) ** 2)  # noqa: E731
  want = anchor_map.procrustes(t, s)
  np.testing.assert_allclose(residual(w), residual(want), rtol=1e-3)
  saved = np.load(tmp_path / "run" / anchor_map.FILE)
  np.testing.assert_array_equal(saved, w)
  # a second setup of the same workdir reads the map back instead of fitting one
  monkeypatch.setattr(anchor_map, "fit", lambda *a, **k: pytest.fail("refitted"))
  again = train.setup(config, workdir, devices=jax.devices()[:2])
  np.testing.assert_array_equal(np.asarray(again.teacher_params()["anchor_map"]), w)
  # the step's anchor: 1 - cos(student's full vector, unit(teacher @ W)), mean
  batch = _texts_batch(run, ANCHORS, POSITIVES)
  vecs = train.step.encode_pairs(run.train_model, state.params, batch, None,
                                 deterministic=True)
  student = np.concatenate([np.asarray(v)[:, -1] for v in vecs]).astype(np.float64)
  teacher = np.concatenate([teacher_model.encode(x, normalize=False)
                            for x in (ANCHORS, POSITIVES)]).astype(np.float64)
  anchor = np.mean(1 - np.sum(_unit(student) * _unit(teacher @ w), axis=-1))
  step_fn = train.compile_train_step(run, shardings)
  _, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
  np.testing.assert_allclose(float(shd.local_value(metrics["loss/anchor"])), anchor,
                             rtol=2e-4)
  all_vecs = np.concatenate([np.asarray(v) for v in vecs])
  ref = relational_kd_reference(all_vecs[:, 1, :32], teacher, 20.0, 1.0)
  np.testing.assert_allclose(float(shd.local_value(metrics["loss/distill/L2_D32"])), ref,
                             rtol=2e-4)
