"""Centred exits (model.centred_exits): each layer's mean pooled vector over a sample
of the training texts, estimated by the initial model before step 0 and subtracted
from that layer's vectors from then on (`Embedder.centred_exits`); with
model.exit_components = k, also the top k principal directions of those centred
vectors, projected out from then on (`Embedder.exit_components`).

The shallow layers of a pretrained encoder carry large components shared by every
text (all-MiniLM-L6-v2's layer 1: mean pairwise cosine 0.43 at 64 dims, 0.62 at 384,
against 0.13 at its last layer), so their cosine similarities say little about the
texts; removing the mean is the first step of "all-but-the-top" (Mu and Viswanath
2018) and of BERT-whitening (Su et al. 2021). The last layer's row stays zero: the
full model's vectors are the pretrained model's own.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from jaxembed import sharding as shd
from jaxembed.batch_encode import BatchEncoder
from jaxembed.errors import ConfigError
from jaxembed.models.embedder import CENTER, COMPONENTS


def centring_sample(texts_by_source, weights, n: int) -> list[str]:
  """About `n` texts spread evenly over each source's texts (its records' anchors and
  positives, in record order), the sources in proportion to their mixture weights; a
  deterministic function of the data, the same on every process."""
  total = float(sum(weights))
  out = []
  for texts, w in zip(texts_by_source, weights):
    k = min(len(texts), max(1, int(round(n * w / total))))
    idx = np.unique(np.linspace(0, len(texts) - 1, k).round().astype(np.int64))
    out += [texts[i] for i in idx]
  return out


def without_exit_statistics(run, params):
  """`params` with the exits' means and directions zeroed: the uncentred model."""
  return dict(params, **{name: shd.host_to_global(np.zeros(params[name].shape, np.float32),
                                                  run.param_shardings[name])
                         for name in (CENTER, COMPONENTS) if name in params})


def exit_statistics(run, params, texts, batch_size: int = 128):
  """(means [num_layers, width], components [num_layers, k, width]) float32, k =
  model.exit_components: row l - 1 of `means` is the mean over `texts` of layer l's
  pooled vector under `params` (their centres and components ignored), and of
  `components` the top k right singular vectors of those vectors minus that mean
  (orthonormal rows, largest first, each signed so that its largest-magnitude
  coordinate is positive), for l below the last; the last layer's rows are zero."""
  model = run.model
  layers, width = model.output_layers, model.output_width
  k = model.exit_components
  means = np.zeros((layers, width), np.float32)
  components = np.zeros((layers, k, width), np.float32)
  if layers < 2 or not texts:
    return means, components
  params = without_exit_statistics(run, run.view.merged(params))
  shallow = model.up_to(layers - 1)
  encoder = BatchEncoder(shallow, params, run.tokenizer, layers=layers - 1, width=width,
                         rules=run.rules)
  vectors = encoder(texts, batch_size=batch_size).astype(np.float64)
  means[:layers - 1] = vectors.mean(axis=0)
  if k:
    if k > min(len(texts), width):
      raise ConfigError(f"model.exit_components={k} exceeds the {len(texts)} centring "
                        f"texts or the width {width}")
    for layer in range(layers - 1):
      _, _, vt = np.linalg.svd(vectors[:, layer] - vectors[:, layer].mean(axis=0),
                               full_matrices=False)
      top = vt[:k]
      sign = np.sign(top[np.arange(k), np.abs(top).argmax(axis=1)])
      components[layer] = top * sign[:, None]
  return means, components


def with_exit_centres(run, params):
  """`params` with 'exit_center' set to the layer means of the run's centring sample
  (and 'exit_components' to their top principal directions, model.exit_components)."""
  t0 = time.time()
  means, components = exit_statistics(run, params, list(run.centring_texts))
  logging.info("centred exits: layer means%s of %d training texts in %.1f s (norms by "
               "layer: %s)", f" and {components.shape[1]} principal directions"
               if components.shape[1] else "", len(run.centring_texts), time.time() - t0,
               ", ".join(f"{x:.2f}" for x in np.linalg.norm(means, axis=1)))
  out = {CENTER: means}
  if COMPONENTS in params:
    out[COMPONENTS] = components
  return dict(params, **{name: shd.host_to_global(value, run.param_shardings[name])
                         for name, value in out.items()})
