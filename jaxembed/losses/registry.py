"""Objectives by name, built from the `loss` section of a config.

Every training objective is `loss_fn(q_layers, d_layers, negatives=None, *, rng,
loss_params, inputs) -> (loss, {name: scalar})` over the pooled vectors of every layer
from one encoder pass (`inputs`: the batch's `BatchInputs`). The objectives themselves
are in `objectives.py`, each registered with `@register(name, learnable=...)`
(`registration.py`) on its builder, `builder(cfg, ctx) -> fn(q, d, negatives, *, rng,
scale, bias)`. `make_loss` adds what every objective shares: the teacher terms
(loss.distill) and the one learnable-temperature path: with
`loss.learnable_temperature`, `loss_params` (kept in the train state under
params["loss"] and optimised with the encoder) holds `log_scale` (and SigLIP's `bias`),
passed to the objective as `scale` / `bias` and logged. The config is checked before
anything is built; errors list the valid values.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.losses import objectives  # noqa: F401  (registers the objectives)
from jaxembed.losses.distillation import teacher_distillation
from jaxembed.losses.matryoshka import build_cells
from jaxembed.losses.registration import (REGISTRY, BatchInputs, BuildContext, Objective,
                                          grouped_names, lookup, multivector_names,
                                          named as _named, names, register,
                                          scored_names)

__all__ = ["BatchInputs", "BuildContext", "LOSSES", "Objective", "deepest_layer",
           "distill_settings", "grouped_names", "init_loss_params", "loss_cells",
           "make_loss", "multivector_names", "names", "register", "scored_names"]


def init_loss_params(cfg) -> dict:
  """{} for a fixed temperature; {'log_scale'} (and SigLIP's 'bias') when learnable."""
  if not cfg.get("learnable_temperature", False):
    return {}
  objective = lookup(cfg)
  if not objective.learnable:
    learnable = [n for n, o in REGISTRY.items() if o.learnable]
    raise ConfigError(f"loss.learnable_temperature=True needs loss.name in "
                      f"{learnable}, not {cfg.name!r}")
  if cfg.blockwise:
    raise ConfigError("loss.learnable_temperature=True cannot be combined with "
                      "loss.blockwise=True")
  return objective.init_params(cfg)


def loss_cells(cfg, *, num_layers: int, hidden: int):
  """The (layer, dim) cells loss.matryoshka asks for, checked against the model."""
  m = cfg.matryoshka
  return build_cells(m.mode, num_layers=num_layers, hidden=hidden, layers=m.layers,
                     dims=m.dims, pairs=m.pairs, weights=list(m.weights) or None,
                     layer_weighting=m.layer_weighting)


def deepest_layer(cfg, *, num_layers: int, hidden: int) -> int:
  """The deepest encoder layer the objective reads: its deepest cell's for the
  objectives that read their cells alone (registered cells_only, loss.kl_weight 0, no
  teacher), else the last layer (a KL to the full model, teacher terms, 2DMSE,
  self-distillation, the scored losses)."""
  if (not lookup(cfg).cells_only or cfg.kl_weight
      or distill_settings(cfg) is not None):
    return num_layers
  return max(c.layer for c in loss_cells(cfg, num_layers=num_layers, hidden=hidden))


def make_loss(cfg, *, num_layers: int, hidden: int, mesh=None):
  """The loss function a config asks for. `mesh` is needed for loss.blockwise."""
  objective = lookup(cfg)
  scale = cfg.get("scale", 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      np.isfinite(scale) and scale > 0):
    raise ConfigError(f"loss.scale={scale!r} must be a finite number > 0 (0 makes every "
                      "similarity 0 and nothing trains; below 0 rewards the negatives)")
  cells = loss_cells(cfg, num_layers=num_layers, hidden=hidden)
  if cfg.blockwise and (not objective.blockwise or cfg.kl_weight):
    valid = [n for n, o in REGISTRY.items() if o.blockwise]
    raise ConfigError(f"loss.blockwise=True works with loss.name in {valid} and "
                      f"loss.kl_weight=0, not name={cfg.name!r}, "
                      f"kl_weight={cfg.kl_weight}: the others need the full logits")
  if not cfg.in_batch_negatives and cfg.name != "contrastive":
    raise ConfigError(f"loss.in_batch_negatives=False works with loss.name='contrastive' "
                      f"(each query against its own hard negatives), not {cfg.name!r}")
  init_loss_params(cfg)  # checks the learnable-temperature settings
  if objective.multivector and distill_settings(cfg) is not None:
    raise ConfigError(f"loss.name={cfg.name!r} scores token vectors; loss.distill "
                      "distils pooled vectors: set loss.distill.weight and "
                      "anchor_weight to 0")
  ctx = BuildContext(cells=cells, layer_index={l: l - 1 for l in range(1, num_layers + 1)},
                     num_layers=num_layers, hidden=hidden, mesh=mesh)
  fn = objective.build(cfg, ctx)
  kd = distill_settings(cfg)

  def loss_fn(q, d, negatives=None, *, rng=None, loss_params=None,
              inputs: BatchInputs = BatchInputs()):
    """inputs: what the objective reads from the batch besides the vectors."""
    grades, groups, teacher = inputs.grades, inputs.groups, inputs.teacher
    pair_weight, teacher_weight = inputs.pair_weight, inputs.teacher_weight
    lp = loss_params or {}
    scale = jnp.exp(lp["log_scale"]) if "log_scale" in lp else None
    loss, aux = 0.0, {}
    graded = {}
    if objective.scored:
      if grades is None:
        raise ValueError(f"loss.name={cfg.name!r} ranks graded pairs, and the batch has "
                         "no scores: train on data.source='scored_file'")
      graded = {"grades": grades}
    if objective.grouped and groups is not None:
      graded = {"groups": groups}
    if kd is None or kd.pair_weight:
      pairs, aux = fn(q, d, negatives, rng=rng, scale=scale, bias=lp.get("bias"), **graded)
      loss = pairs if pair_weight is None else pair_weight * pairs
      if kd is not None or pair_weight is not None:   # the unweighted pair loss
        aux = dict(aux, **{"loss/pairs": pairs})
    if kd is not None:
      if teacher is None:
        raise ValueError("loss.distill is set but the step passed no teacher embeddings")
      student, target = _texts_of_batch(q, d, negatives), _texts_of_batch(*teacher)
      tokens = (None if inputs.text_tokens is None
                else _texts_of_batch(*inputs.text_tokens))
      mapped = (None if inputs.anchor_teacher is None
                else _texts_of_batch(*inputs.anchor_teacher))
      kd_loss, parts = teacher_distillation(
          student, target, cells=cells, layer_index=ctx.layer_index,
          full_layer=num_layers, scale=kd.scale, temperature=kd.temperature,
          weight=kd.weight, anchor_weight=kd.anchor_weight,
          anchor_rows=_rows(kd, "anchor_min_tokens", tokens),
          kl_rows=_rows(kd, "kl_min_tokens", tokens), anchor_teacher=mapped)
      if teacher_weight is not None:
        kd_loss = teacher_weight * kd_loss
      loss = kd.pair_weight * loss + kd_loss
      aux = dict(aux, **_named(parts))
    if scale is not None:
      aux = dict(aux, scale=scale)
    if "bias" in lp:
      aux = dict(aux, bias=lp["bias"])
    return loss, aux
  return loss_fn


# loss.distill.anchor_map: '' (the teacher's own vectors) or a fixed map fitted before
# step 0 (train/anchor_map.py).
ANCHOR_MAPS = ("", "procrustes")


def distill_settings(cfg):
  """loss.distill when it asks for a teacher (weight or anchor_weight > 0), else None;
  its numbers checked."""
  kd = cfg.get("distill")
  if kd is None:
    return None
  for name in ("weight", "anchor_weight", "pair_weight", "scale", "temperature",
               "anchor_min_tokens", "kl_min_tokens"):
    value = kd.get(name, 0) if name.endswith("_min_tokens") else kd[name]
    if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
      raise ConfigError(f"loss.distill.{name}={value!r} must be a finite number >= 0")
  if kd.scale == 0 or kd.temperature == 0:
    raise ConfigError("loss.distill.scale and loss.distill.temperature must be > 0")
  anchor_map = kd.get("anchor_map", "")
  if anchor_map not in ANCHOR_MAPS:
    raise ConfigError(f"loss.distill.anchor_map={anchor_map!r}: one of {list(ANCHOR_MAPS)}")
  if anchor_map:
    texts = kd.get("anchor_map_texts", 0)
    if not isinstance(texts, int) or isinstance(texts, bool) or texts < 2:
      raise ConfigError(f"loss.distill.anchor_map_texts={texts!r} must be an integer >= 2 "
                        "(the training texts the map is fitted on)")
    if not kd.anchor_weight:
      raise ConfigError(f"loss.distill.anchor_map={anchor_map!r} maps the teacher for the "
                        "anchor term, and loss.distill.anchor_weight is 0: set it > 0, "
                        "or anchor_map=''")
    if not kd.get("teacher", ""):
      raise ConfigError(f"loss.distill.anchor_map={anchor_map!r} maps another model's "
                        "space into the student's; the teacher is the student's own "
                        "pretrained model (loss.distill.teacher=''), already in its "
                        "space: set anchor_map=''")
  if not (kd.weight or kd.anchor_weight):
    if kd.pair_weight != 1.0:
      raise ConfigError(f"loss.distill.pair_weight={kd.pair_weight} without a teacher "
                        "(loss.distill.weight and anchor_weight are 0) would scale the "
                        "whole loss; set the learning rate instead")
    return None
  if not (kd.pair_weight or kd.weight or kd.anchor_weight):
    raise ConfigError("loss.distill: every weight is 0, nothing would be trained")
  return kd


def _rows(kd, field: str, text_tokens):
  """The texts a teacher term holds: None (all) unless loss.distill.<field> > 0."""
  minimum = kd.get(field, 0)
  if not minimum:
    return None
  if text_tokens is None:
    raise ValueError(f"loss.distill.{field} is set but the step passed no token counts")
  return text_tokens >= minimum


def _texts_of_batch(q, d, negatives=None):
  """Every text of a batch, anchors then positives then negatives: [n, ...] from
  q, d [batch, ...] and negatives [batch, k, ...]."""
  parts = [q, d]
  if negatives is not None:
    parts.append(negatives.reshape((-1,) + negatives.shape[2:]))
  return jnp.concatenate(parts, axis=0)


LOSSES = names()
