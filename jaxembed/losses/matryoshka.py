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
                weights: Sequence[float] | None = None,
                field: str = "loss.matryoshka") -> tuple[Cell, ...]:
  """The cells a config asks for, checked against the model's layers and width.

  mode: 'none' (the full model only), 'mrl' (each of `dims` at the last layer),
  'grid' (every layer in `layers` x every dim in `dims`), 'pairs' (the (layer, dim)
  list `pairs`, Starbucks). `weights`, if given, has one entry per cell in that order.
  """
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
  for layer, dim in coords:
    if not 1 <= layer <= num_layers:
      raise ConfigError(f"{field}: layer {layer} is not in the model; valid layers: "
                        f"1..{num_layers}")
    if not 1 <= dim <= hidden:
      raise ConfigError(f"{field}: dim {dim} is larger than the hidden size {hidden} "
                        f"(valid: 1..{hidden})")
  if len(set(coords)) != len(coords):
    raise ConfigError(f"{field}: repeated (layer, dim) cells in {coords}")
  if weights is None or len(weights) == 0:
    weights = [1.0] * len(coords)
  if len(weights) != len(coords):
    raise ConfigError(f"{field}.weights has {len(weights)} entries for {len(coords)} "
                      f"cells {coords}; give one weight per cell or none")
  if any(w < 0 for w in weights) or sum(weights) <= 0:
    raise ConfigError(f"{field}.weights must be non-negative with a positive sum")
  return tuple(Cell(int(l), int(d), float(w)) for (l, d), w in zip(coords, weights))


def cell_logits(q_layers, d_layers, cell: Cell, layer_index: dict[int, int], scale: float,
                neg_layers=None):
  """scale * cosine between queries and candidates of one (layer, dim) sub-model.

  neg_layers: optional hard negatives [batch, k, n_layers, hidden]."""
  i = layer_index[cell.layer]
  q = l2_normalize(q_layers[:, i, :cell.dim])
  d = l2_normalize(d_layers[:, i, :cell.dim])
  negs = None if neg_layers is None else l2_normalize(neg_layers[:, :, i, :cell.dim])
  return scale * q @ candidates(d, negs).T


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
  loss = 0.0
  teacher = None
  if kl_weight:
    full_layer = max(layer_index)
    full = Cell(full_layer, q_layers.shape[-1])
    teacher = jax.nn.softmax(jax.lax.stop_gradient(
        cell_logits(q_layers, d_layers, full, layer_index, scale, neg_layers)), axis=-1)
  for cell in cells:
    if blockwise_mesh is not None:
      i = layer_index[cell.layer]
      value = ring_info_nce(
          q_layers[:, i, :cell.dim], d_layers[:, i, :cell.dim],
          None if neg_layers is None else neg_layers[:, :, i, :cell.dim],
          mesh=blockwise_mesh, scale=scale, symmetric=symmetric, chunk=blockwise_chunk)
      per_cell[cell.name] = value
      loss = loss + (cell.weight / total_w) * value
      continue
    logits = cell_logits(q_layers, d_layers, cell, layer_index, scale, neg_layers)
    value = info_nce_from_logits(logits, symmetric=symmetric)
    if teacher is not None:
      log_student = jax.nn.log_softmax(logits, axis=-1)
      kl = jnp.mean(jnp.sum(teacher * (jnp.log(jnp.clip(teacher, 1e-30)) - log_student),
                            axis=-1))
      value = value + kl_weight * kl
    per_cell[cell.name] = value
    loss = loss + (cell.weight / total_w) * value
  return loss, per_cell
