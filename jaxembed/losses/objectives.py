"""The training objectives, each registered by name with what it can do (a learnable
temperature, graded pairs, groups, a blockwise form, token matrices): a builder
`(cfg, ctx) -> fn(q, d, negatives, *, rng, scale, bias)` over the pooled vectors (or
token matrices) of every layer. `registry.make_loss` wraps the one a config names with
the teacher terms and the learnable temperature."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.losses import late_interaction
from jaxembed.losses.contrastive import (DIRECTIONS, contrastive_loss, mix_hard_negatives,
                                         multi_positive_pairs, sigmoid_loss)
from jaxembed.losses.distillation import multi_exit_self_distillation
from jaxembed.losses.matryoshka import matryoshka_loss, two_d_matryoshka_loss
from jaxembed.losses.registration import BuildContext, named as _named, register
from jaxembed.losses.scored import angle_objective, cosent_loss


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
