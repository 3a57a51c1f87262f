"""The anchor's width map (loss.distill.anchor_map='procrustes'): the anchor term pulls
the student's full vectors towards the teacher's, which needs one space. A teacher
other than the student (loss.distill.teacher) has its own width and its own axes, so
its vectors are first mapped into the student's space by a fixed orthogonal map W
[d_teacher, d_student], fitted once before training: the orthogonal Procrustes solution
that best turns the teacher's vectors of a sample of training texts into the
pretrained student's vectors of the same texts (Schönemann 1966; the map of Conneau et
al. 2018's cross-lingual word embeddings). W has orthonormal columns (rows when the
teacher is the narrower), so it keeps the teacher's angles within the kept subspace and
adds no parameters to train. Only the anchor reads the mapped vectors; the KL terms
compare in-batch similarities and use the teacher's own.

The map is written to the workdir (`anchor_map.npy`) before the first step and read
back on a resume, so a resumed run trains against the same map.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np

from jaxembed.batch_encode import BatchEncoder

FILE = "anchor_map.npy"


def procrustes(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
  """W [d_t, d_s] with orthonormal columns (or rows, d_t < d_s) minimising
  ||unit(teacher) W - unit(student)||_F: from the SVD U S V^T of unit(teacher)^T
  unit(student), W = U V^T. Both [n, d], rows paired by text."""
  t, s = _unit(teacher), _unit(student)
  if t.shape[0] != s.shape[0]:
    raise ValueError(f"{t.shape[0]} teacher vectors against {s.shape[0]} student vectors")
  u, _, vt = np.linalg.svd(t.T @ s, full_matrices=False)
  return u @ vt


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_cosine(teacher, student, w=None) -> float:
  """The mean cosine of each text's (mapped) teacher vector to its student vector."""
  t = _unit(teacher) if w is None else _unit(_unit(teacher) @ w)
  return float(np.mean(np.sum(t * _unit(student), axis=-1)))


def fit(run, params, batch_size: int = 64) -> np.ndarray:
  """The map of `run` (its teacher model, sample texts and tokenizer), the student's
  vectors those of `params` (the pretrained model's): its last layer at full width, as
  the anchor compares."""
  texts = list(run.anchor_texts)
  start = time.time()
  model = run.model
  student = BatchEncoder(model, run.view.merged(params), run.tokenizer,
                         layers=model.output_layers, width=model.output_width,
                         rules=run.rules)(texts, batch_size=batch_size)[:, -1]
  teacher = run.teacher_model.encode(texts, batch_size=batch_size, normalize=False)
  teacher = np.asarray(teacher)[:, :run.other_teacher.dim]
  w = procrustes(teacher, student)
  logging.info("loss.distill.anchor_map: an orthogonal %d -> %d map fitted on %d "
               "training texts in %.1f s; teacher-to-student cosine %.3f after the map",
               w.shape[0], w.shape[1], len(texts), time.time() - start,
               mean_cosine(teacher, student, w))
  return w.astype(np.float32)


def fitted(run, params_fn) -> np.ndarray:
  """The run's map: read from its workdir (a resumed run), else fitted on
  params_fn()'s student and written there."""
  path = run.workdir / FILE
  if path.exists():
    return np.load(io.BytesIO(path.read_bytes()))
  w = fit(run, params_fn())
  buffer = io.BytesIO()
  np.save(buffer, w)
  run.workdir.write(FILE, buffer.getvalue())
  return w
