"""Pooling of token states into one vector, masked by the attention mask.

Every function takes `hidden` [batch, length, width] and `mask` [batch, length] (1 for
real tokens) and returns [batch, width]. Padding may be on either side.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxembed.errors import ConfigError


def cls_pool(hidden, mask):
  """The first token's state ([CLS] for BERT); assumes right padding, as BERT uses."""
  del mask
  return hidden[:, 0]


def mean_pool(hidden, mask):
  """Average over real tokens (sentence-transformers' `pooling_mode_mean_tokens`).

  An all-padding row gives zeros rather than NaN (its count is clamped to 1e-9, as in
  sentence-transformers).
  """
  m = mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(axis=1) / jnp.clip(m.sum(axis=1), 1e-9)


def max_pool(hidden, mask):
  """Element-wise max over real tokens; an all-padding row gives zeros."""
  m = mask.astype(bool)[..., None]
  out = jnp.where(m, hidden, jnp.finfo(hidden.dtype).min).max(axis=1)
  return jnp.where(m.any(axis=1), out, 0.0)


def last_token_pool(hidden, mask):
  """The state of the last real token, under left or right padding.

  The index of the last 1 in each mask row is found directly, so the result is right
  whichever side was padded; an all-padding row gives the state at position 0.
  """
  length = mask.shape[1]
  positions = jnp.arange(length)[None, :]
  last = jnp.max(jnp.where(mask.astype(bool), positions, 0), axis=1)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


POOLERS = {
    "cls": cls_pool,
    "mean": mean_pool,
    "max": max_pool,
    "last_token": last_token_pool,
}


def check_pooling(name: str, field: str = "model.pooling") -> str:
  if name not in POOLERS:
    raise ConfigError(f"{field}={name!r} is not a pooling; valid values: {sorted(POOLERS)}")
  return name


class Pooler(nn.Module):
  """A pooling module selected by name. The parameter-free poolers are plain functions;
  a trainable pooler is a module with the same call signature."""
  kind: str = "mean"

  @nn.compact
  def __call__(self, hidden, mask):
    return POOLERS[check_pooling(self.kind)](hidden, mask)
