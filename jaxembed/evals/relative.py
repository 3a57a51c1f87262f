"""Relative representations (Moschella et al. 2023, "Relative representations enable
zero-shot latent space communication"): each sample is represented by its cosine
similarities to a fixed set of anchor samples, embedded by the same encoder. Two
encoders trained apart give different absolute spaces (rotations, rescalings, other
coordinates), but similar relative ones, so a classifier trained on one encoder's
relative features can be used on another's ("zero-shot stitching")."""

from __future__ import annotations

import numpy as np


def relative(x, anchors) -> np.ndarray:
  """[n, a] cosines of each row of x [n, d] with each anchor [a, d]."""
  x = np.asarray(x, np.float64)
  anchors = np.asarray(anchors, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  anchors = anchors / np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
  return x @ anchors.T
