"""A ViT image classifier with a Matryoshka representation (Kusupati et al. 2022, MRL).

pixels -> ViT encoder -> the mean of the last layer's tokens (global average pooling, as
big_vision's ViT classifiers; a randomly initialised [CLS] carries almost nothing of
the image at first, and a short run learns far slower from it) -> a linear map to
`rep_dim` (the representation z) -> linear heads. MRL trains a head on each nested prefix z[:m] for m
in `dims`; MRL-E (`shared_head`) uses one head whose first m rows serve dim m; a
fixed-feature (FF) baseline is rep_dim = m with one head (dims = (m,)).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxembed.errors import ConfigError
from jaxembed.models.layers import Linear
from jaxembed.models.vit import ViTConfig, ViTEncoder


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  rep_dim: int
  dims: tuple[int, ...]          # the nested dims with a head and a loss term
  shared_head: bool = False      # MRL-E
  num_classes: int = 10

  def __post_init__(self):
    dims = tuple(self.dims)
    if not dims or list(dims) != sorted(set(dims)) or dims[0] < 1 or dims[-1] > self.rep_dim:
      raise ConfigError(f"classifier dims {dims}: increasing, in 1..rep_dim="
                        f"{self.rep_dim}")
    if self.shared_head and dims[-1] != self.rep_dim:
      raise ConfigError(f"a shared head (MRL-E) spans rep_dim={self.rep_dim}; the largest "
                        f"dim is {dims[-1]}")


class ImageClassifier(nn.Module):
  vit: ViTConfig
  spec: ClassifierSpec

  def setup(self):
    s = self.spec
    self.encoder = ViTEncoder(self.vit)
    # z starts at unit scale (std 1/sqrt(width) weights on layer-normed tokens) and the
    # heads at zero, as big_vision initialises classifier heads: the heads learn from
    # the first step instead of waiting on two tiny factors.
    self.representation = Linear((s.rep_dim,), ("embed", None),
                                 init_std=self.vit.hidden_size ** -0.5)
    init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None))
    zeros = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,))
    shapes = ([(s.rep_dim, s.num_classes)] if s.shared_head
              else [(m, s.num_classes) for m in s.dims])
    self.kernels = [self.param(f"head_{n}_kernel", init, shape)
                    for n, shape in enumerate(shapes)]
    self.biases = [self.param(f"head_{n}_bias", zeros, (s.num_classes,))
                   for n in range(len(shapes))]

  def features(self, pixels, deterministic: bool = True):
    """z [batch, rep_dim] from images [batch, H, W, C] in [0, 1]."""
    hidden, _ = self.encoder(pixels, deterministic=deterministic)
    return self.representation(jnp.mean(hidden[-1], axis=1))

  def heads(self):
    """The heads in `losses.mrl_classification_loss`'s layout."""
    if self.spec.shared_head:
      return (self.kernels[0], self.biases[0])
    return list(zip(self.kernels, self.biases))

  def __call__(self, pixels, deterministic: bool = True):
    return self.features(pixels, deterministic), self.heads()

  def example_inputs(self):
    v = self.vit
    return (jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),)
