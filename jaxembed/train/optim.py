"""Optimizer and learning-rate schedule from config (optax)."""

from __future__ import annotations

import logging
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxembed.errors import ConfigError
from jaxembed.models.weights import param_path

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")


def make_schedule(cfg, total_steps: int):
  """Linear warmup to cfg.learning_rate, then constant / linear / cosine to zero."""
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f"optim.schedule={cfg.schedule!r}; valid values: {list(SCHEDULES)}")
  for name in ("learning_rate", "weight_decay", "b1", "b2", "eps", "grad_clip",
               "decay_to_init"):
    value = cfg[name]
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
      raise ConfigError(f"optim.{name}={value!r} must be a finite number >= 0")
  if cfg.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate={cfg.learning_rate} must be positive")
  warmup = int(cfg.warmup_steps)
  if warmup < 0:
    raise ConfigError(f"optim.warmup_steps={warmup} must be >= 0")
  if warmup > total_steps:
    # A short run (a quick try on one's own data) keeps the default warmup: clamp it.
    logging.warning("optim.warmup_steps=%d is more than train.steps=%d: warming up over "
                    "all %d steps", warmup, total_steps, total_steps)
    warmup = total_steps
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
  else:
    after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])


def trainable_mask(params, patterns):
  """A tree of bools like `params`: True where the parameter trains. A parameter
  trains when its path matches (re.search) one of `patterns`, or when it is the
  objective's own (under 'loss/': a learnable temperature); no patterns: all train.
  Every pattern must be a valid regex matching at least one path."""
  patterns = tuple(patterns or ())
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [param_path(kp) for kp, _ in flat]
  if not patterns:
    return jax.tree_util.tree_unflatten(treedef, [True] * len(paths))
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ConfigError(f"optim.trainable: {pattern!r} is not a regular expression ({e})")
  for pattern, rx in zip(patterns, compiled):
    if not any(rx.search(p) for p in paths):
      shown = sorted({"/".join(p.split("/")[:3]) for p in paths})
      raise ConfigError(f"optim.trainable: {pattern!r} matches no parameter; paths look "
                        f"like {shown[:12]}{' ...' if len(shown) > 12 else ''}")
  keep = [p.startswith("loss/") or any(rx.search(p) for rx in compiled) for p in paths]
  return jax.tree_util.tree_unflatten(treedef, keep)


class DecayToInitState(NamedTuple):
  init: Any      # the parameters at step 0, laid out like the parameters


def decay_to_init(rate: float) -> optax.GradientTransformation:
  """Adds rate * (params - params at step 0) to the updates: decoupled weight decay
  toward the starting point instead of toward zero (L2-SP, Li et al. 2018, in AdamW's
  decoupled form). Put before the learning-rate scaling, it pulls every weight back
  toward the pretrained one in proportion to how far it has moved, whatever input the
  model sees: a constraint on the function everywhere, where an output anchor to the
  teacher holds only the texts it is computed on."""

  def init(params):
    # A copy, not the same buffers: the state is donated with the parameters. (Under
    # optax.tree_map_params `params` is a placeholder without a shape: kept as is.)
    return DecayToInitState(init=jax.tree.map(
        lambda p: jnp.copy(p) if hasattr(p, "shape") else p, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("decay_to_init needs the parameters (tx.update(g, s, params))")
    updates = jax.tree.map(lambda u, p, p0: u + rate * (p - p0).astype(u.dtype),
                           updates, params, state.init)
    return updates, state

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg, total_steps: int, trainable=None):
  """Returns (optax transformation, schedule). trainable: a tree of bools like the
  parameters (`trainable_mask`); the frozen ones get no update and no optimizer state
  (gradient clipping and weight decay see only the trainable ones)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={cfg.name!r}; valid values: {list(OPTIMIZERS)}")
  to_init = float(cfg.decay_to_init)
  if to_init and cfg.name != "adamw":
    raise ConfigError(f"optim.decay_to_init={to_init} needs optim.name='adamw' (it is "
                      f"decoupled decay, applied with AdamW's), not {cfg.name!r}")
  if cfg.name == "adamw":
    # optax.adamw's own chain (the same state), with the pull toward the start, when
    # asked for, beside its decay toward 0.
    pull = [decay_to_init(to_init)] if to_init else []
    opt = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                      optax.add_decayed_weights(cfg.weight_decay), *pull,
                      optax.scale_by_learning_rate(schedule))
  else:
    opt = optax.sgd(schedule, momentum=cfg.b1)
  chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
  tx = optax.chain(*chain, opt)
  if trainable is not None and not all(jax.tree.leaves(trainable)):
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
