"""Centred exits (model.centered_exits): each layer's mean pooled vector over a sample
of the training texts, estimated by the initial model before step 0 and subtracted
from that layer's vectors from then on (`Embedder.centered_exits`).

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
from jaxembed.api import BatchEncoder
from jaxembed.models import lora
from jaxembed.models.embedder import CENTER


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


def layer_means(run, params, texts, batch_size: int = 128) -> np.ndarray:
  """[num_layers, width] float32: row l - 1 is the mean over `texts` of layer l's pooled
  vector under `params` (their centres ignored), for l below the last; the last row
  is zero."""
  model = run.model
  layers, width = model.output_layers, model.output_width
  means = np.zeros((layers, width), np.float32)
  if layers < 2 or not texts:
    return means
  params = dict(lora.merge(params, run.lora_scale), **{CENTER: shd.host_to_global(
      np.zeros((layers, width), np.float32), run.param_shardings[CENTER])})
  shallow = model.up_to(layers - 1)
  encoder = BatchEncoder(shallow, params, run.tokenizer, layers=layers - 1, width=width,
                         rules=run.rules)
  vectors = encoder(texts, batch_size=batch_size)
  means[:layers - 1] = vectors.astype(np.float64).mean(axis=0)
  return means


def with_exit_centres(run, params):
  """`params` with 'exit_center' set to the layer means of the run's centring sample."""
  t0 = time.time()
  means = layer_means(run, params, list(run.centering_texts))
  logging.info("centred exits: layer means of %d training texts in %.1f s (norms by "
               "layer: %s)", len(run.centering_texts), time.time() - t0,
               ", ".join(f"{x:.2f}" for x in np.linalg.norm(means, axis=1)))
  return dict(params, **{CENTER: shd.host_to_global(means, run.param_shardings[CENTER])})
