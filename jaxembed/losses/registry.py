"""Objectives by name, built from the `loss` section of a config.

Every training objective is `loss_fn(q_layers, d_layers, negatives=None, *, rng,
loss_params) -> (loss, {name: scalar})` over the pooled vectors of every layer from one
encoder pass. `loss_params` are the objective's own trainable parameters (a learnable
temperature, SigLIP's bias), kept in the train state under params["loss"] and
optimised with the encoder; `init_loss_params(cfg)` gives their initial values. The
config is checked here, before anything is built, and errors list the valid values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.losses.contrastive import (DIRECTIONS, contrastive_loss, mix_hard_negatives,
                                         sigmoid_loss)
from jaxembed.losses.distillation import multi_exit_self_distillation
from jaxembed.losses.matryoshka import build_cells, matryoshka_loss, two_d_matryoshka_loss

LOSSES = ("info_nce", "contrastive", "sigmoid", "2dmse", "self_distillation")
LEARNABLE = ("info_nce", "contrastive", "sigmoid")


def init_loss_params(cfg) -> dict:
  """{} for a fixed temperature; {'log_scale'} (and SigLIP's 'bias') when learnable."""
  if not cfg.get("learnable_temperature", False):
    return {}
  if cfg.name not in LEARNABLE:
    raise ConfigError(f"loss.learnable_temperature=True needs loss.name in "
                      f"{list(LEARNABLE)}, not {cfg.name!r}")
  if cfg.blockwise:
    raise ConfigError("loss.learnable_temperature=True cannot be combined with "
                      "loss.blockwise=True")
  if cfg.name == "sigmoid":
    return {"log_scale": np.float32(np.log(cfg.sigmoid_scale)),
            "bias": np.float32(cfg.sigmoid_bias)}
  return {"log_scale": np.float32(np.log(cfg.scale))}


def _learned(loss_fn):
  """Reads the temperature from loss_params when it is learnable, and logs it."""
  def wrapped(*args, rng=None, loss_params=None, **kw):
    loss_params = loss_params or {}
    if "log_scale" in loss_params:
      kw["scale"] = jnp.exp(loss_params["log_scale"])
    loss, aux = loss_fn(*args, rng=rng, **kw)
    if "log_scale" in loss_params:
      aux = dict(aux, scale=jnp.exp(loss_params["log_scale"]))
    return loss, aux
  return wrapped


def _named(parts: dict, prefix: str = "loss/"):
  return {f"{prefix}{k}": v for k, v in parts.items()}


def _info_nce(q, d, negatives=None, *, rng=None, **kw):
  del rng
  loss, per_cell = matryoshka_loss(q, d, neg_layers=negatives, **kw)
  return loss, _named(per_cell)


def _per_cell(q, d, negatives=None, *, rng=None, cells, layer_index, one_cell,
              scale=None, bias=None):
  """Weighted mean over Matryoshka cells of a loss on truncated vectors; `scale` and
  `bias`, when given, are passed on to `one_cell` (learned values)."""
  total_w = sum(c.weight for c in cells)
  parts = {}
  for n, cell in enumerate(cells):
    i = layer_index[cell.layer]
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


def make_loss(cfg, *, num_layers: int, hidden: int, mesh=None):
  """The loss function a config asks for. `mesh` is needed for loss.blockwise."""
  if cfg.name not in LOSSES:
    raise ConfigError(f"loss.name={cfg.name!r}; valid values: {list(LOSSES)}")
  m = cfg.matryoshka
  cells = build_cells(m.mode, num_layers=num_layers, hidden=hidden, layers=m.layers,
                      dims=m.dims, pairs=m.pairs, weights=list(m.weights) or None,
                      layer_weighting=m.layer_weighting)
  layer_index = {l: l - 1 for l in range(1, num_layers + 1)}
  if cfg.blockwise and (cfg.name != "info_nce" or cfg.kl_weight):
    raise ConfigError(f"loss.blockwise=True works with loss.name='info_nce' and "
                      f"loss.kl_weight=0, not name={cfg.name!r}, "
                      f"kl_weight={cfg.kl_weight}: the others need the full logits")
  init_loss_params(cfg)  # checks the learnable-temperature settings
  if cfg.name == "info_nce":
    return _learned(functools.partial(
        _info_nce, cells=cells, layer_index=layer_index, scale=cfg.scale,
        symmetric=cfg.symmetric, kl_weight=cfg.kl_weight,
        blockwise_mesh=mesh if cfg.blockwise else None, blockwise_chunk=cfg.blockwise_chunk))
  if cfg.name == "contrastive":
    _check(cfg, "directions", DIRECTIONS)
    c = cfg

    def one_cell(q, d, negs, key, scale=None, bias=None):
      del bias
      extra = None
      if c.mix_negatives:
        extra = mix_hard_negatives(q, d, key, n_hardest=c.mix_hardest,
                                   n_synthetic=c.mix_negatives, negatives=negs)
      return contrastive_loss(q, d, negs, scale=c.scale if scale is None else scale,
                              directions=tuple(c.directions),
                              margin=c.false_negative_margin, focal_gamma=c.focal_gamma,
                              query_negatives=extra)
    return _learned(functools.partial(_per_cell, cells=cells, layer_index=layer_index,
                                      one_cell=one_cell))
  if cfg.name == "sigmoid":
    def sigmoid_cell(q, d, n, k, scale=None, bias=None):
      del k
      log_t = jnp.log(cfg.sigmoid_scale) if scale is None else jnp.log(scale)
      return sigmoid_loss(q, d, n, log_scale=log_t,
                          bias=cfg.sigmoid_bias if bias is None else bias)
    per_cell = functools.partial(_per_cell, cells=cells, layer_index=layer_index,
                                 one_cell=sigmoid_cell)

    def sigmoid_objective(q, d, negatives=None, *, rng=None, loss_params=None):
      lp = loss_params or {}
      loss, aux = per_cell(q, d, negatives, rng=rng,
                           scale=jnp.exp(lp["log_scale"]) if lp else None,
                           bias=lp.get("bias"))
      return loss, (dict(aux, scale=jnp.exp(lp["log_scale"]), bias=lp["bias"]) if lp
                    else aux)
    return sigmoid_objective
  if cfg.name == "2dmse":
    bad = [x for x in m.dims if not 1 <= x <= hidden]
    if bad:
      raise ConfigError(f"loss.matryoshka.dims: {bad} not in the model; valid: 1..{hidden}")

    def two_d(q, d, negatives=None, *, rng, loss_params=None):
      loss, parts = two_d_matryoshka_loss(
          q, d, rng, dims=tuple(m.dims), scale=cfg.scale, kl_weight=cfg.kl_weight,
          kl_temperature=cfg.kl_temperature)
      return loss, _named(parts)
    return two_d
  exits = tuple(m.layers)
  bad = [l for l in exits if not 1 <= l <= num_layers]
  if bad or not exits:
    raise ConfigError(f"loss.matryoshka.layers={exits}: exits must be in 1..{num_layers}")

  def self_distill(q, d, negatives=None, *, rng=None, loss_params=None):
    loss, parts = multi_exit_self_distillation(
        q, d, exits, layer_index=layer_index, scale=cfg.scale,
        distill_weight=cfg.kl_weight or 1.0, temperature=cfg.kl_temperature,
        negatives=negatives)
    return loss, _named(parts)
  return self_distill
