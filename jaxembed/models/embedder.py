"""Encoder + pooling: token ids in, one pooled vector per requested layer out."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from jaxembed.models.pooling import Pooler


def make_encoder(cfg, name: str = "encoder") -> nn.Module:
  """The Linen encoder for a config: BertConfig -> BertEncoder, DecoderConfig ->
  DecoderEncoder. Each returns a tuple of num_layers + 1 hidden states."""
  from jaxembed.models.bert import BertConfig, BertEncoder
  from jaxembed.models.decoder import DecoderConfig, DecoderEncoder
  if isinstance(cfg, BertConfig):
    return BertEncoder(cfg, name=name)
  if isinstance(cfg, DecoderConfig):
    return DecoderEncoder(cfg, name=name)
  raise TypeError(f"no text encoder for {type(cfg).__name__}")


def encoder_config(kind: str, fields: dict):
  """An encoder config saved as (class name, fields): how workdirs and exported
  folders record it."""
  from jaxembed.models.bert import BertConfig
  from jaxembed.models.decoder import DecoderConfig
  return {"BertConfig": BertConfig, "DecoderConfig": DecoderConfig}[kind](**fields)


class Embedder(nn.Module):
  """Pools the hidden state of each layer in `layers` (1-based) with one encoder pass.

  Returns [batch, len(layers), hidden]; truncation to a Matryoshka dim happens in the
  loss or in `encode`, since all dims share one vector. `pool_mask` (default: the
  attention mask) selects the pooled tokens, so instruction tokens can be attended to
  without being pooled.
  """
  bert: Any                      # BertConfig | DecoderConfig
  pooling: str = "mean"
  layers: tuple[int, ...] = ()
  pool_heads: int = 8
  pool_latents: int = 64

  @nn.compact
  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True,
               pool_mask=None):
    hidden = make_encoder(self.bert)(input_ids, attention_mask, deterministic=deterministic)
    layers = self.layers or tuple(range(1, self.bert.num_layers + 1))
    mask = attention_mask if pool_mask is None else pool_mask * attention_mask
    pooled = Pooler(self.pooling, self.pool_heads, self.pool_latents, name="pooler")(
        hidden, mask, layers)
    return nn.with_logical_constraint(pooled, ("activation_batch", None, "activation_embed"))
