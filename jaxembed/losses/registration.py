"""The objective registry's parts: what an objective is (`Objective`), what it is built
with (`BuildContext`) and may read from a batch (`BatchInputs`), and `register`, which
the builders in `objectives.py` are decorated with. `registry.make_loss` builds one from
a config."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxembed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  build: Callable             # (cfg, BuildContext) -> fn(q, d, negs, *, rng, scale, bias)
  learnable: bool             # may learn its temperature (and bias)
  init_params: Callable | None = None   # cfg -> {'log_scale', ...} when learnable
  scored: bool = False        # ranks graded pairs: fn(..., grades=[batch] scores)
  grouped: bool = False       # reads the batch's groups: fn(..., groups=[batch] ids)
  # Reads the encoder only at its Matryoshka cells (with loss.kl_weight 0 and no
  # teacher): the train step may stop at the deepest cell's layer.
  cells_only: bool = False
  blockwise: bool = False     # has a blockwise (ring) form: loss.blockwise
  # Scores token matrices (late interaction): q, d, negatives are (vectors [batch,
  # layers, T, dim], mask [batch, T]) pairs from a multi-vector model.
  multivector: bool = False


@dataclasses.dataclass(frozen=True)
class BatchInputs:
  """What an objective may read from a batch besides its vectors (each None when the
  batch or the run has none): graded pairs' `grades` [batch]; `groups` [batch] (same
  group: positives of each other); the frozen teacher's vectors `teacher` (anchors
  [batch, width], positives[, negatives [batch, k, width]]) and `text_tokens`, each
  text's token count laid out like them (loss.distill.anchor_min_tokens,
  kl_min_tokens); `anchor_teacher`, the teacher's vectors mapped into the student's
  space for the anchor, laid out the same (loss.distill.anchor_map; None: the anchor
  reads `teacher`); `pair_weight` and `teacher_weight`, the batch's own multipliers
  of the pair objective and of the teacher terms (a mixture's per-dataset weights;
  None = 1)."""
  grades: object = None
  groups: object = None
  teacher: object = None
  text_tokens: object = None
  anchor_teacher: object = None
  pair_weight: object = None
  teacher_weight: object = None


@dataclasses.dataclass(frozen=True)
class BuildContext:
  cells: tuple
  layer_index: dict
  num_layers: int
  hidden: int
  mesh: object = None


REGISTRY: dict[str, Objective] = {}


def register(name: str, *, learnable: bool = False, init_params=None, scored: bool = False,
             grouped: bool = False, cells_only: bool = False, blockwise: bool = False,
             multivector: bool = False):
  def wrap(build):
    if name in REGISTRY:
      raise ValueError(f"objective {name!r} is registered twice")
    REGISTRY[name] = Objective(name, build, learnable,
                                init_params or (scale_params if learnable else None),
                                scored, grouped, cells_only, blockwise, multivector)
    return build
  return wrap


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def scored_names() -> tuple[str, ...]:
  """The objectives that train on graded pairs (data.source='scored_file')."""
  return tuple(n for n, o in REGISTRY.items() if o.scored)


def grouped_names() -> tuple[str, ...]:
  """The objectives that take several positives per query from the batch's groups
  (same-group pairs are positives of each other)."""
  return tuple(n for n, o in REGISTRY.items() if o.grouped)


def multivector_names() -> tuple[str, ...]:
  """The objectives that score token matrices (a multi-vector model's output)."""
  return tuple(n for n, o in REGISTRY.items() if o.multivector)


def scale_params(cfg) -> dict:
  return {"log_scale": np.float32(np.log(cfg.scale))}


def lookup(cfg) -> Objective:
  if cfg.name not in REGISTRY:
    raise ConfigError(f"loss.name={cfg.name!r}; valid values: {list(REGISTRY)}")
  return REGISTRY[cfg.name]


def named(parts: dict, prefix: str = "loss/"):
  return {f"{prefix}{k}": v for k, v in parts.items()}
