"""Objectives by name, built from the `loss` section of a config.

Every training objective is `loss_fn(q_layers, d_layers, negatives=None, *, rng,
loss_params, inputs) -> (loss, {name: scalar})` over the pooled vectors of every layer
from one encoder pass (`inputs`: the batch's `BatchInputs`). An objective is
registered with `@register(name, learnable=...)` on its builder, `builder(cfg, ctx) -> fn(q, d, negatives, *, rng, scale, bias)`; the registry
adds the one learnable-temperature path: with `loss.learnable_temperature`, `loss_params`
(kept in the train state under params["loss"] and optimised with the encoder) holds
`log_scale` (and SigLIP's `bias`), passed to the objective as `scale` / `bias` and
logged. The config is checked before anything is built; errors list the valid values.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.losses.contrastive import (DIRECTIONS, contrastive_loss, mix_hard_negatives,
                                         multi_positive_pairs, sigmoid_loss)
from jaxembed.losses import late_interaction
from jaxembed.losses.distillation import multi_exit_self_distillation, teacher_distillation
from jaxembed.losses.matryoshka import build_cells, matryoshka_loss, two_d_matryoshka_loss
from jaxembed.losses.scored import angle_objective, cosent_loss


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
  kl_min_tokens); `pair_weight` and `teacher_weight`, the batch's own multipliers of
  the pair objective and of the teacher terms (a mixture's per-dataset weights;
  None = 1)."""
  grades: object = None
  groups: object = None
  teacher: object = None
  text_tokens: object = None
  pair_weight: object = None
  teacher_weight: object = None


@dataclasses.dataclass(frozen=True)
class BuildContext:
  cells: tuple
  layer_index: dict
  num_layers: int
  hidden: int
  mesh: object = None


_REGISTRY: dict[str, Objective] = {}


def register(name: str, *, learnable: bool = False, init_params=None, scored: bool = False,
             grouped: bool = False, cells_only: bool = False, blockwise: bool = False,
             multivector: bool = False):
  def wrap(build):
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is registered twice")
    _REGISTRY[name] = Objective(name, build, learnable,
                                init_params or (_scale_params if learnable else None),
                                scored, grouped, cells_only, blockwise, multivector)
    return build
  return wrap


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def scored_names() -> tuple[str, ...]:
  """The objectives that train on graded pairs (data.source='scored_file')."""
  return tuple(n for n, o in _REGISTRY.items() if o.scored)


def grouped_names() -> tuple[str, ...]:
  """The objectives that take several positives per query from the batch's groups
  (same-group pairs are positives of each other)."""
  return tuple(n for n, o in _REGISTRY.items() if o.grouped)


def multivector_names() -> tuple[str, ...]:
  """The objectives that score token matrices (a multi-vector model's output)."""
  return tuple(n for n, o in _REGISTRY.items() if o.multivector)


def _scale_params(cfg) -> dict:
  return {"log_scale": np.float32(np.log(cfg.scale))}


def _objective(cfg) -> Objective:
  if cfg.name not in _REGISTRY:
    raise ConfigError(f"loss.name={cfg.name!r}; valid values: {list(_REGISTRY)}")
  return _REGISTRY[cfg.name]


def init_loss_params(cfg) -> dict:
  """{} for a fixed temperature; {'log_scale'} (and SigLIP's 'bias') when learnable."""
  if not cfg.get("learnable_temperature", False):
    return {}
  objective = _objective(cfg)
  if not objective.learnable:
    learnable = [n for n, o in _REGISTRY.items() if o.learnable]
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
  if (not _objective(cfg).cells_only or cfg.kl_weight
      or distill_settings(cfg) is not None):
    return num_layers
  return max(c.layer for c in loss_cells(cfg, num_layers=num_layers, hidden=hidden))


def make_loss(cfg, *, num_layers: int, hidden: int, mesh=None):
  """The loss function a config asks for. `mesh` is needed for loss.blockwise."""
  objective = _objective(cfg)
  scale = cfg.get("scale", 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      np.isfinite(scale) and scale > 0):
    raise ConfigError(f"loss.scale={scale!r} must be a finite number > 0 (0 makes every "
                      "similarity 0 and nothing trains; below 0 rewards the negatives)")
  cells = loss_cells(cfg, num_layers=num_layers, hidden=hidden)
  if cfg.blockwise and (not objective.blockwise or cfg.kl_weight):
    valid = [n for n, o in _REGISTRY.items() if o.blockwise]
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
      kd_loss, parts = teacher_distillation(
          student, target, cells=cells, layer_index=ctx.layer_index,
          full_layer=num_layers, scale=kd.scale, temperature=kd.temperature,
          weight=kd.weight, anchor_weight=kd.anchor_weight,
          anchor_rows=_rows(kd, "anchor_min_tokens", tokens),
          kl_rows=_rows(kd, "kl_min_tokens", tokens))
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


def _named(parts: dict, prefix: str = "loss/"):
  return {f"{prefix}{k}": v for k, v in parts.items()}


def _per_cell(q, d, negatives, *, rng, ctx: BuildContext, one_cell, scale, bias):
  """Weighted mean over Matryoshka cells of a loss on truncated vectors."""
  cells = ctx.cells
  total_w = sum(c.weight for c in cells)
  parts = {}
  for n, cell in enumerate(cells):
    i = ctx.layer_index[cell.layer]
    negs = None if negatives is None else negatives[:, :, i, :cell.dim]
    key = None if rng is None else jax.random.fold_in(rng, n)
    parts[cell.name] = one_cell(q[:, i, :cell.dim], d[:, i, :cell.dim], negs, key,
                                scale=scale, bias=bias)
  loss = sum(c.weight / total_w * parts[c.name] for c in cells)
  return loss, _named(parts)


def _check(cfg, name, valid):
  value = cfg[name]
  values = value if isinstance(value, (tuple, list)) else (value,)
  bad = [v for v in values if v not in valid]
  if bad:
    raise ConfigError(f"loss.{name}={value!r}: {bad} not valid; valid values: {list(valid)}")


# ----------------------------------------------------------------------------- objectives

@register("info_nce", learnable=True, cells_only=True, blockwise=True)
def _info_nce(cfg, ctx: BuildContext):
  """InfoNCE with in-batch and hard negatives over the Matryoshka cells (symmetric,
  Starbucks' KL to the full model, blockwise ring version)."""
  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None):
    del rng, bias
    loss, per_cell = matryoshka_loss(
        q, d, neg_layers=negatives, cells=ctx.cells, layer_index=ctx.layer_index,
        scale=cfg.scale if scale is None else scale, symmetric=cfg.symmetric,
        kl_weight=cfg.kl_weight, blockwise_mesh=ctx.mesh if cfg.blockwise else None,
        blockwise_chunk=cfg.blockwise_chunk)
    return loss, _named(per_cell)
  return fn


@register("contrastive", learnable=True, cells_only=True)
def _contrastive(cfg, ctx: BuildContext):
  """GTE's partition over several directions, false-negative margin, focal weights,
  mixed hard negatives."""
  _check(cfg, "directions", DIRECTIONS)

  def one_cell(q, d, negs, key, scale=None, bias=None):
    del bias
    extra = None
    if cfg.mix_negatives:
      extra = mix_hard_negatives(q, d, key, n_hardest=cfg.mix_hardest,
                                 n_synthetic=cfg.mix_negatives, negatives=negs)
    return contrastive_loss(q, d, negs, scale=cfg.scale if scale is None else scale,
                            directions=tuple(cfg.directions),
                            margin=cfg.false_negative_margin, focal_gamma=cfg.focal_gamma,
                            query_negatives=extra, in_batch=cfg.in_batch_negatives)

  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None):
    return _per_cell(q, d, negatives, rng=rng, ctx=ctx, one_cell=one_cell, scale=scale,
                     bias=bias)
  return fn


def _sigmoid_params(cfg) -> dict:
  return {"log_scale": np.float32(np.log(cfg.sigmoid_scale)),
          "bias": np.float32(cfg.sigmoid_bias)}


@register("sigmoid", learnable=True, init_params=_sigmoid_params, grouped=True,
          cells_only=True)
def _sigmoid(cfg, ctx: BuildContext):
  """SigLIP's pairwise sigmoid loss over the cells; a batch with groups labels every
  same-group pair positive."""
  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None, groups=None):
    def one_cell(q, d, n, key, scale=None, bias=None):
      del key
      log_t = jnp.log(cfg.sigmoid_scale) if scale is None else jnp.log(scale)
      return sigmoid_loss(q, d, n, log_scale=log_t,
                          bias=cfg.sigmoid_bias if bias is None else bias, groups=groups)
    return _per_cell(q, d, negatives, rng=rng, ctx=ctx, one_cell=one_cell, scale=scale,
                     bias=bias)
  return fn


@register("multi_positive_info_nce", learnable=True, grouped=True, cells_only=True)
def _multi_positive(cfg, ctx: BuildContext):
  """InfoNCE with several positives per query: every pair of the query's group (the
  batch's 'group', e.g. a class) is a positive, the mean over positives of
  -log softmax (as LIMIT trains; Weller et al. 2025); loss.symmetric adds d -> q. On
  a batch without groups it is InfoNCE."""
  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None, groups=None):
    def one_cell(q, d, n, key, scale=None, bias=None):
      del key, bias
      return multi_positive_pairs(q, d, n, groups=groups,
                                  scale=cfg.scale if scale is None else scale,
                                  symmetric=cfg.symmetric)
    return _per_cell(q, d, negatives, rng=rng, ctx=ctx, one_cell=one_cell, scale=scale,
                     bias=bias)
  return fn


@register("2dmse")
def _two_d_mse(cfg, ctx: BuildContext):
  """2D Matryoshka Sentence Embeddings: a random shallow layer and dim per step, plus
  KL to the last layer; hard negatives and loss.symmetric as for info_nce."""
  m = cfg.matryoshka
  bad = [x for x in m.dims if not 1 <= x <= ctx.hidden]
  if bad:
    raise ConfigError(f"loss.matryoshka.dims: {bad} not in the model; valid: 1..{ctx.hidden}")

  def fn(q, d, negatives=None, *, rng, scale=None, bias=None):
    del scale, bias
    loss, parts = two_d_matryoshka_loss(
        q, d, rng, dims=tuple(m.dims), scale=cfg.scale, kl_weight=cfg.kl_weight,
        kl_temperature=cfg.kl_temperature, neg_layers=negatives, symmetric=cfg.symmetric)
    return loss, _named(parts)
  return fn


def _scored(cfg, ctx: BuildContext, score_fn):
  """A graded-pair ranking loss per Matryoshka cell (weighted mean over the cells)."""
  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None, grades):
    del bias
    if negatives is not None:
      raise ValueError(f"loss.name={cfg.name!r} ranks graded pairs; the batch has hard "
                       "negatives, which it has no use for")
    tau = cfg.scale if scale is None else scale
    return _per_cell(q, d, None, rng=rng, ctx=ctx, scale=tau, bias=None,
                     one_cell=lambda u, v, n, key, scale, bias: score_fn(u, v, grades, scale))
  return fn


@register("cosent", scored=True)
def _cosent(cfg, ctx: BuildContext):
  """CoSENT (Su 2022) on graded pairs (data.source='scored_file'): every pair of pairs
  whose grades differ ranked by loss.scale * cosine, per Matryoshka cell."""
  return _scored(cfg, ctx, lambda u, v, g, tau: cosent_loss(u, v, g, tau=tau))


@register("angle", scored=True)
def _angle(cfg, ctx: BuildContext):
  """AnglE (Li & Li 2024) on graded pairs: loss.angle.cosine_weight x CoSENT +
  loss.angle.angle_weight x the same ranking on the angle-difference score, both at
  tau = loss.scale, per Matryoshka cell."""
  a = cfg.angle
  for name in ("cosine_weight", "angle_weight"):
    if not a[name] >= 0:
      raise ConfigError(f"loss.angle.{name}={a[name]!r} must be >= 0")
  return _scored(cfg, ctx, lambda u, v, g, tau: angle_objective(
      u, v, g, cosine_weight=a.cosine_weight, angle_weight=a.angle_weight, tau=tau))


@register("self_distillation")
def _self_distillation(cfg, ctx: BuildContext):
  """Multi-exit: every exit in loss.matryoshka.layers trained, deeper exits teaching
  shallower ones."""
  exits = tuple(cfg.matryoshka.layers)
  if "exit_teacher" in cfg:
    _check(cfg, "exit_teacher", ("next", "deepest", "none"))
  bad = [l for l in exits if not 1 <= l <= ctx.num_layers]
  if bad or not exits:
    raise ConfigError(f"loss.matryoshka.layers={exits}: exits must be in 1..{ctx.num_layers}")

  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None):
    del rng, scale, bias
    loss, parts = multi_exit_self_distillation(
        q, d, exits, layer_index=ctx.layer_index, scale=cfg.scale,
        distill_weight=cfg.kl_weight or 1.0, temperature=cfg.kl_temperature,
        teacher=cfg.get("exit_teacher", "next"), negatives=negatives)
    return loss, _named(parts)
  return fn


@register("maxsim", cells_only=True, blockwise=True, multivector=True)
def _maxsim(cfg, ctx: BuildContext):
  """Late interaction: InfoNCE over scale * MaxSim of token vectors (ColBERT, PyLate's
  Contrastive loss; scale 1 is ColBERT's unscaled score), in-batch and hard negatives,
  per Matryoshka (layer, token dim) cell; loss.blockwise: the ring form, candidates'
  token matrices passed around the data-parallel devices, never all gathered."""
  if cfg.kl_weight or cfg.symmetric:
    raise ConfigError("loss.name='maxsim' ranks documents for queries: loss.kl_weight "
                      "and loss.symmetric must be 0 / False")

  def fn(q, d, negatives=None, *, rng=None, scale=None, bias=None):
    del rng, bias
    s = cfg.scale if scale is None else scale
    parts = {}
    for cell in ctx.cells:
      i = ctx.layer_index[cell.layer]
      cut = lambda x: late_interaction.cell_vectors(x, i, cell.dim)  # noqa: E731
      negs = () if negatives is None else (cut(negatives[0]), negatives[1])
      if cfg.blockwise:
        parts[cell.name] = late_interaction.ring_maxsim_info_nce(
            cut(q[0]), q[1], cut(d[0]), d[1], *negs, mesh=ctx.mesh, scale=s,
            chunk=cfg.blockwise_chunk)
      else:
        parts[cell.name] = late_interaction.maxsim_info_nce(
            cut(q[0]), q[1], cut(d[0]), d[1], *negs, scale=s)
    total = sum(c.weight for c in ctx.cells)
    return sum(c.weight / total * parts[c.name] for c in ctx.cells), _named(parts)
  return fn


LOSSES = names()
