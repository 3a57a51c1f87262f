"""Aligning two frozen unimodal encoders from few pairs: a linear map per modality
into a shared space, trained on the pairs' frozen features with the symmetric
multi-positive InfoNCE (pairs that share a caption are each other's positives), plus,
optionally, STRUCTURE's regulariser (`jaxembed.losses.structure`) on each modality.

    loss = InfoNCE(A z_img, B z_txt) + structure_weight * (R(z_img, A z_img) + R(z_txt, B z_txt))

`fit_alignment` returns an `Alignment`: `.images(x)` and `.texts(x)` give normalised
vectors in the shared space.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.losses.contrastive import multi_positive_pairs
from jaxembed.losses.structure import structure_regularizer
from jaxembed.train.small_fit import fit_on_batches


@dataclasses.dataclass
class Alignment:
  image_map: np.ndarray          # [d_image, dim]
  text_map: np.ndarray           # [d_text, dim]
  history: list = dataclasses.field(default_factory=list)   # (iteration, loss)

  @staticmethod
  def _apply(x, w):
    v = np.asarray(x, np.float64) @ w
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

  def images(self, x) -> np.ndarray:
    return self._apply(x, self.image_map)

  def texts(self, x) -> np.ndarray:
    return self._apply(x, self.text_map)


def alignment_loss(params, z_img, z_txt, groups, *, scale: float, structure_weight: float,
                   levels: int, temperature: float):
  h_img, h_txt = z_img @ params["image"], z_txt @ params["text"]
  loss = multi_positive_pairs(h_img, h_txt, groups=groups, scale=scale, symmetric=True)
  if structure_weight:
    loss = loss + structure_weight * (
        structure_regularizer(z_img, h_img, levels=levels, temperature=temperature)
        + structure_regularizer(z_txt, h_txt, levels=levels, temperature=temperature))
  return loss


def fit_alignment(image_features, text_features, groups=None, *, dim: int = 128,
                  iterations: int = 1000, batch_size: int = 256,
                  learning_rate: float = 1e-3, scale: float = 20.0,
                  structure_weight: float = 0.0, levels: int = 3,
                  temperature: float = 0.1, seed: int = 0) -> Alignment:
  """Fits the two maps on the pairs (image_features[i], text_features[i]); `groups`
  [n] (ints): pairs of one group are positives of each other (default: every pair its
  own). Adam with a cosine decay, random batches (seeded); maps start random
  (orthogonal columns)."""
  zi = np.asarray(image_features, np.float32)
  zt = np.asarray(text_features, np.float32)
  n = len(zi)
  if len(zt) != n:
    raise ConfigError(f"fit_alignment: {n} image features but {len(zt)} text features")
  if n < 2:
    raise ConfigError(f"fit_alignment: {n} pairs; at least 2 are needed")
  if structure_weight < 0 or levels < 1:
    raise ConfigError(f"fit_alignment: structure_weight={structure_weight} must be >= 0 "
                      f"and levels={levels} >= 1")
  g = np.arange(n) if groups is None else np.asarray(groups)
  batch_size = min(batch_size, n)
  key, ki, kt = jax.random.split(jax.random.PRNGKey(seed), 3)
  init = jax.nn.initializers.orthogonal()
  params = {"image": init(ki, (zi.shape[1], dim)), "text": init(kt, (zt.shape[1], dim))}
  loss_fn = lambda p, a, b, c: alignment_loss(
      p, a, b, c, scale=scale, structure_weight=structure_weight, levels=levels,
      temperature=temperature)
  params, history = fit_on_batches(loss_fn, params, (zi, zt, g), iterations=iterations,
                                   batch_size=batch_size, learning_rate=learning_rate,
                                   key=key, label="alignment")
  return Alignment(np.asarray(params["image"], np.float64),
                   np.asarray(params["text"], np.float64), history)
