"""Matryoshka wrappers: the contrastive loss summed over (layer, dim) sub-models.

- MRL (Kusupati et al. 2022): nested dims at the last layer, sum_m c_m L(z[:m]).
- 2D Matryoshka over layers x dims: the full grid of (layer, dim) cells.
- Starbucks (Zhuang et al. 2024): a fixed list of (layer, dim) pairs, small to large,
  all trained every step, optionally with a KL term from each sub-model's in-batch
  score distribution to the full model's (the full model detached, as the teacher).

Every cell reads the pooled vector of its layer from one encoder pass
(`Embedder` returns [batch, layers, hidden]) and truncates it to its dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxembed.errors import ConfigError
from jaxembed.losses.blockwise import ring_info_nce
from jaxembed.losses.contrastive import candidates, info_nce_from_logits, l2_normalize

MODES = ("none", "mrl", "grid", "pairs")


@dataclasses.dataclass(frozen=True)
class Cell:
  layer: int
  dim: int
  weight: float = 1.0

  @property
  def name(self) -> str:
    return f"L{self.layer}_D{self.dim}"


def build_cells(mode: str, *, num_layers: int, hidden: int, layers: Sequence[int] = (),
                dims: Sequence[int] = (), pairs: Sequence[Sequence[int]] = (),
                weights: Sequence[float] | None = None, layer_weighting: str = "uniform",
                field: str = "loss.matryoshka") -> tuple[Cell, ...]:
  """The cells a config asks for, checked against the model's layers and width.

  mode: 'none' (the full model only), 'mrl' (each of `dims` at the last layer),
  'grid' (every layer in `layers` x every dim in `dims`), 'pairs' (the (layer, dim)
  list `pairs`, Starbucks). `weights`, if given, has one entry per cell in that order;
  `layer_weighting` (uniform, linear, log) multiplies each cell's weight by its layer's.
  """
  if layer_weighting not in LAYER_WEIGHTINGS:
    raise ConfigError(f"{field}.layer_weighting={layer_weighting!r}; valid values: "
                      f"{list(LAYER_WEIGHTINGS)}")
  if mode not in MODES:
    raise ConfigError(f"{field}.mode={mode!r}; valid values: {list(MODES)}")
  if mode == "none":
    coords = [(num_layers, hidden)]
  elif mode == "mrl":
    coords = [(num_layers, d) for d in dims]
  elif mode == "grid":
    coords = [(l, d) for l in layers for d in dims]
  else:
    coords = [tuple(p) for p in pairs]
    if any(len(p) != 2 for p in coords):
      raise ConfigError(f"{field}.pairs must be (layer, dim) pairs, got {list(pairs)}")
  if not coords:
    raise ConfigError(f"{field}: mode={mode!r} with no cells; set "
                      f"{'pairs' if mode == 'pairs' else 'layers and dims'}")
  where = f"{field}.pairs" if mode == "pairs" else None
  for layer, dim in coords:
    if not 1 <= layer <= num_layers:
      raise ConfigError(f"{where or field + '.layers'}: layer {layer} is not in the "
                        f"model; valid layers: 1..{num_layers}")
    if not 1 <= dim <= hidden:
      raise ConfigError(f"{where or field + '.dims'}: dim {dim} is out of range for the "
                        f"hidden size {hidden} (valid: 1..{hidden})")
  if len(set(coords)) != len(coords):
    raise ConfigError(f"{field}: repeated (layer, dim) cells in {coords}")
  if weights is None or len(weights) == 0:
    weights = [1.0] * len(coords)
  if len(weights) != len(coords):
    raise ConfigError(f"{field}.weights has {len(weights)} entries for {len(coords)} "
                      f"cells {coords}; give one weight per cell or none")
  if any(w < 0 for w in weights) or sum(weights) <= 0:
    raise ConfigError(f"{field}.weights must be non-negative with a positive sum")
  return tuple(Cell(int(l), int(d), float(w) * layer_weight(l, num_layers, layer_weighting))
               for (l, d), w in zip(coords, weights))


def prefix_cosines(q, c, dims: Sequence[int], eps: float = 1e-12):
  """cos(q[:, :m], c[:, :m]) for every m in `dims` (ascending): a list of [Bq, Bc].

  The width is cut at the dims into chunks; each chunk's dot products and squared norms
  are computed once and the prefixes are running sums of them, so the whole nested
  family costs one [Bq, D] x [D, Bc] product instead of one per dim. (A running sum
  rather than stack-then-cumsum: only the prefixes themselves stay alive.) Norms are
  clamped at eps as in `l2_normalize`.
  """
  out = []
  dots = q_sq = c_sq = 0.0
  start = 0
  for m in dims:
    qc, cc = q[:, start:m], c[:, start:m]
    dots = dots + qc @ cc.T
    q_sq = q_sq + jnp.sum(jnp.square(qc), -1)
    c_sq = c_sq + jnp.sum(jnp.square(cc), -1)
    q_norm = jnp.maximum(jnp.sqrt(q_sq), eps)
    c_norm = jnp.maximum(jnp.sqrt(c_sq), eps)
    out.append(dots / (q_norm[:, None] * c_norm[None, :]))
    start = m
  return out


def grid_logits(q_layers, d_layers, cells: Sequence[Cell], layer_index: dict[int, int],
                scale: float, neg_layers=None, extra: Sequence[Cell] = ()):
  """scale * cosine logits [Bq, B (+ B*k)] of every cell, layer by layer: each layer's
  vectors are read once and all its dims come from `prefix_cosines`."""
  out = {}
  wanted = list(cells) + list(extra)
  for layer in sorted({c.layer for c in wanted}):
    i = layer_index[layer]
    dims = sorted({c.dim for c in wanted if c.layer == layer})
    negs = None if neg_layers is None else neg_layers[:, :, i, :]
    cos = prefix_cosines(q_layers[:, i, :], candidates(d_layers[:, i, :], negs), dims)
    for c in wanted:
      if c.layer == layer:
        out[(c.layer, c.dim)] = scale * cos[dims.index(c.dim)]
  return out


def matryoshka_loss(q_layers, d_layers, cells: Sequence[Cell], neg_layers=None, *,
                    layer_index: dict[int, int], scale: float = 20.0,
                    symmetric: bool = False, kl_weight: float = 0.0,
                    blockwise_mesh=None, blockwise_chunk: int = 512):
  """Weighted mean over cells of InfoNCE, plus kl_weight * KL(full || cell).

  q_layers, d_layers: [batch, n_layers, hidden] pooled vectors (neg_layers, optional:
  [batch, k, n_layers, hidden] hard negatives); `layer_index` maps a
  1-based layer to its index on axis 1. Weights are normalised to sum to one, so the
  loss is on the scale of a single InfoNCE. Returns (loss, {cell name: cell loss}).

  blockwise_mesh: compute each cell's InfoNCE with `blockwise.ring_info_nce` over that
  mesh (no device holds the global logits); the KL term needs the full distributions
  and is not available then.
  """
  if blockwise_mesh is not None and kl_weight:
    raise ValueError("the KL term needs the full logits; it can't be used blockwise")
  total_w = sum(c.weight for c in cells)
  per_cell = {}
  if blockwise_mesh is not None:
    for cell in cells:
      i = layer_index[cell.layer]
      per_cell[cell.name] = ring_info_nce(
          q_layers[:, i, :cell.dim], d_layers[:, i, :cell.dim],
          None if neg_layers is None else neg_layers[:, :, i, :cell.dim],
          mesh=blockwise_mesh, scale=scale, symmetric=symmetric, chunk=blockwise_chunk)
  else:
    full = Cell(max(layer_index), q_layers.shape[-1])
    logits = grid_logits(q_layers, d_layers, cells, layer_index, scale, neg_layers,
                         extra=(full,) if kl_weight else ())
    if kl_weight:
      teacher = jax.nn.softmax(jax.lax.stop_gradient(logits[(full.layer, full.dim)]), -1)
      log_teacher = jnp.log(jnp.clip(teacher, 1e-30))
    for cell in cells:
      cell_logit = logits[(cell.layer, cell.dim)]
      value = info_nce_from_logits(cell_logit, symmetric=symmetric)
      if kl_weight:
        log_student = jax.nn.log_softmax(cell_logit, axis=-1)
        value += kl_weight * jnp.mean(jnp.sum(teacher * (log_teacher - log_student), -1))
      per_cell[cell.name] = value
  loss = sum((c.weight / total_w) * per_cell[c.name] for c in cells)
  return loss, per_cell


LAYER_WEIGHTINGS = ("uniform", "linear", "log")


def layer_weight(layer: int, num_layers: int, scheme: str = "uniform") -> float:
  """How much a sub-model at `layer` counts: uniform 1, linear l / n, or
  log(1 + l) / log(1 + n) (deeper layers weigh more, shallow ones still count)."""
  if scheme == "uniform":
    return 1.0
  if scheme == "linear":
    return layer / num_layers
  if scheme == "log":
    return math.log1p(layer) / math.log1p(num_layers)
  raise ValueError(f"layer weighting {scheme!r}: valid {list(LAYER_WEIGHTINGS)}")


def _masked_logits(q, c, dim, scale):
  """scale * cosine on the first `dim` coordinates, `dim` possibly traced: the rest
  are zeroed, which gives the same cosine as slicing."""
  keep = (jnp.arange(q.shape[-1]) < dim).astype(q.dtype)
  return scale * l2_normalize(q * keep) @ l2_normalize(c * keep).T


def two_d_matryoshka_loss(q_layers, d_layers, rng, *, dims: Sequence[int], scale=20.0,
                          last_layer_weight: float = 1.0,
                          prior_layers_weight: float = 1.0, kl_weight: float = 1.0,
                          kl_temperature: float = 0.3, neg_layers=None,
                          symmetric: bool = False):
  """2DMSE (Li et al. 2024, "2D Matryoshka Sentence Embeddings"): each step samples a
  shallower layer i in 1..n-1 and a dim m from `dims`, and sums InfoNCE at
  (n, full), (n, m) [x last_layer_weight] and (i, full), (i, m) [x prior_layers_weight],
  plus kl_weight * KL(last layer || layer i) of the in-batch score distributions at
  temperature kl_temperature (the last layer detached). The defaults are those of
  sentence-transformers' Matryoshka2dLoss (weights 1, temperature 0.3). Layers are
  positions on axis 1 of q_layers (the last one is the full model).
  neg_layers [batch, k, n_layers, hidden]: hard negatives, candidates for every query
  beside the batch's positives in all four terms and in the KL's distributions (as in
  sentence-transformers, whose Matryoshka2dLoss wraps a ranking loss over all the
  batch's candidates). symmetric=True adds the document->query direction to each
  InfoNCE term (see `info_nce_from_logits`).
  Returns (loss, {"layer": i (1-based), "dim": m, ...parts}).
  """
  n, hidden = q_layers.shape[1], q_layers.shape[-1]
  k_layer, k_dim = jax.random.split(rng)
  i = jax.random.randint(k_layer, (), 0, n - 1)            # index of a shallower layer
  m = jnp.asarray(dims)[jax.random.randint(k_dim, (), 0, len(dims))]
  def cands(layer_index):
    return candidates(jnp.take(d_layers, layer_index, axis=1), None if neg_layers is None
                      else jnp.take(neg_layers, layer_index, axis=2))
  last_q, last_d = q_layers[:, -1], cands(n - 1)
  shallow_q, shallow_d = jnp.take(q_layers, i, axis=1), cands(i)
  nce = functools.partial(info_nce_from_logits, symmetric=symmetric)
  parts = {
      "last_full": nce(_masked_logits(last_q, last_d, hidden, scale)),
      "last_dim": nce(_masked_logits(last_q, last_d, m, scale)),
      "prior_full": nce(_masked_logits(shallow_q, shallow_d, hidden, scale)),
      "prior_dim": nce(_masked_logits(shallow_q, shallow_d, m, scale)),
  }
  teacher = jax.lax.stop_gradient(_masked_logits(last_q, last_d, hidden, scale))
  student = _masked_logits(shallow_q, shallow_d, hidden, scale)
  p = jax.nn.softmax(teacher / kl_temperature, -1)
  kl = jnp.mean(jnp.sum(p * (jax.nn.log_softmax(teacher / kl_temperature, -1)
                             - jax.nn.log_softmax(student / kl_temperature, -1)), -1))
  parts["kl"] = kl
  loss = (last_layer_weight * (parts["last_full"] + parts["last_dim"])
          + prior_layers_weight * (parts["prior_full"] + parts["prior_dim"])
          + kl_weight * kl)
  return loss, {"layer": i + 1, "dim": m, **parts}


def mrl_classification_loss(features, labels, heads, dims: Sequence[int],
                            weights: Sequence[float] | None = None,
                            efficient: bool = True):
  """Matryoshka Representation Learning for a classifier (Kusupati et al. 2022, Eq. 1):
  sum_m c_m CE(W_m z[:m] + b_m, y). MRL-E (efficient=True) shares one head,
  heads = (kernel [D, classes], bias [classes]) and W_m = kernel[:m]; plain MRL has a
  head per dim, heads = [(kernel_m [m, classes], bias_m), ...] in the order of dims.
  """
  weights = [1.0] * len(dims) if weights is None else list(weights)
  if len(weights) != len(dims):
    raise ValueError(f"{len(weights)} weights for {len(dims)} dims")
  total = 0.0
  for n, (m, c) in enumerate(zip(dims, weights)):
    kernel, bias = (heads[0][:m], heads[1]) if efficient else heads[n]
    logits = features[:, :m] @ kernel + bias
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1)[:, 0]
    total = total + c * jnp.mean(nll)
  return total
