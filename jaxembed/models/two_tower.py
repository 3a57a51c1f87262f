"""Two-tower models: an image tower and a text tower meeting in one embedding space
(CLIP / SigLIP; the temperature and SigLIP's bias are the objective's learnable
parameters, `loss.learnable_temperature`), or two text towers for asymmetric pairs,
or one shared text tower for symmetric pairs.

Each tower is an encoder, a pooler and a linear projection to `embed_dim`. The output
of each side is [batch, 1, embed_dim] (one "layer"), so every objective of
`jaxembed.losses`, Matryoshka dims included, applies unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxembed.models.embedder import make_encoder, text_inputs
from jaxembed.models.layers import Linear
from jaxembed.models.pooling import Pooler
from jaxembed.models.vit import ViTConfig, ViTEncoder

TOWERS = ("image_text", "text_text")


class Tower(nn.Module):
  encoder: Any                # ViTConfig (image) or a text encoder config
  pooling: str
  embed_dim: int
  pool_heads: int = 8
  pool_latents: int = 64

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool = True):
    if isinstance(self.encoder, ViTConfig):
      hidden, mask = ViTEncoder(self.encoder, name="encoder")(
          inputs["pixels"], deterministic=deterministic)
      pool_mask = mask
    else:
      mask = inputs["attention_mask"]
      hidden = make_encoder(self.encoder)(inputs["input_ids"], mask,
                                          deterministic=deterministic)
      pool_mask = inputs.get("pool_mask", mask) * mask
    last = (len(hidden) - 1,)
    pooled = Pooler(self.pooling, self.pool_heads, self.pool_latents, name="pooler")(
        hidden, pool_mask, last)
    out = Linear((self.embed_dim,), ("embed", None), name="projection")(pooled)
    return nn.with_logical_constraint(out, ("activation_batch", None, "activation_embed"))


class TwoTower(nn.Module):
  """(anchor inputs, positive inputs) -> ([B, 1, D], [B, 1, D]).

  towers='image_text': anchors are images ({'pixels'}), positives texts.
  towers='text_text': both texts; `shared` uses one tower for both sides.
  """
  towers: str
  text: Any
  image: Any = None
  shared: bool = False
  image_pooling: str = "cls"
  text_pooling: str = "mean"
  embed_dim: int = 64
  pool_heads: int = 8
  pool_latents: int = 64

  def setup(self):
    kw = dict(embed_dim=self.embed_dim, pool_heads=self.pool_heads,
              pool_latents=self.pool_latents)
    self.text_tower = Tower(self.text, self.text_pooling, **kw)
    if self.towers == "image_text":
      self.anchor_tower = Tower(self.image, self.image_pooling, **kw)
    elif not self.shared:
      self.anchor_tower = Tower(self.text, self.text_pooling, **kw)

  def encode_anchor(self, inputs, deterministic: bool = True):
    tower = self.text_tower if (self.towers == "text_text" and self.shared) else self.anchor_tower
    return tower(inputs, deterministic=deterministic)

  def encode_text(self, inputs, deterministic: bool = True):
    return self.text_tower(inputs, deterministic=deterministic)

  def __call__(self, anchor, positive, *, deterministic: bool = True):
    return (self.encode_anchor(anchor, deterministic),
            self.encode_text(positive, deterministic))

  # ------------------------------------------------------------------ interface
  # (see models/embedder.py)

  supports_hard_negatives = False
  supports_grad_cache = False
  supports_packing = False
  supports_early_exit = False    # one output "layer": nothing to stop early at
  multivector = False            # pooled vectors
  head = False                   # no Dense chain / LayerNorm after pooling
  head_norm = False
  centred_exits = False         # (model.centred_exits is for a single tower)
  exit_components = 0

  @property
  def text_config(self):
    return self.text

  @property
  def symmetric(self) -> bool:
    return self.towers == "text_text" and self.shared

  @property
  def query_modality(self) -> str:
    return "image" if self.towers == "image_text" else "text"

  @property
  def pretrained_paths(self) -> tuple[tuple[str, ...], ...]:
    """The text towers' encoders, which take the pretrained text weights."""
    if self.towers == "text_text" and not self.shared:
      return (("text_tower", "encoder"), ("anchor_tower", "encoder"))
    return (("text_tower", "encoder"),)

  @property
  def output_layers(self) -> int:      # what the objectives see: one output "layer"
    return 1

  @property
  def output_width(self) -> int:
    return self.embed_dim

  def up_to(self, depth: int) -> "TwoTower":
    del depth  # one output "layer": the last of each tower
    return self

  def example_inputs(self) -> tuple:
    text = text_inputs()
    if self.towers == "image_text":
      cfg = self.image
      anchor = {"pixels": jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels))}
    else:
      anchor = text
    return anchor, text

  def encode_pairs(self, batch, *, deterministic: bool = True):
    if batch.get("negatives") is not None:
      raise ValueError("hard negatives are not supported with two towers")
    return self(batch["anchor"], batch["positive"], deterministic=deterministic)

  def encode_queries(self, inputs, deterministic: bool = True):
    return self.encode_anchor(inputs, deterministic)

  def encode_documents(self, inputs, deterministic: bool = True):
    return self.encode_text(inputs, deterministic)
