"""Encoder + pooling: token ids in, one pooled vector per requested layer out."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxembed.models.bert import BertConfig, BertEncoder
from jaxembed.models.pooling import Pooler


class Embedder(nn.Module):
  """Pools the hidden state of each layer in `layers` (1-based) with one encoder pass.

  Returns [batch, len(layers), hidden]; truncation to a Matryoshka dim happens in the
  loss or in `encode`, since all dims share one vector.
  """
  bert: BertConfig
  pooling: str = "mean"
  layers: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True):
    hidden = BertEncoder(self.bert, name="encoder")(
        input_ids, attention_mask, deterministic=deterministic)
    layers = self.layers or tuple(range(1, self.bert.num_layers + 1))
    pooler = Pooler(self.pooling, name="pooler")
    pooled = [pooler(hidden[layer], attention_mask) for layer in layers]
    return nn.with_logical_constraint(jnp.stack(pooled, axis=1),
                                      ("activation_batch", None, "activation_embed"))
