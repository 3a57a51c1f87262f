"""A ViT image encoder in Flax Linen (Dosovitskiy et al., 2021), laid out like Hugging
Face's `ViTModel` so its weights load by renaming: patch embedding, a [CLS] token,
learned position embeddings, pre-norm blocks (exact-erf GELU), a final LayerNorm.

Images are [batch, height, width, channels], float. Hidden states: index 0 is the
embedding output, index i the output of block i passed through the final LayerNorm
(the sub-model truncated to layer i = first i blocks + the final norm). Pool with
`cls` or `map` (big_vision's MAP head), or `mean`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.models.bert import SelfAttention
from jaxembed.models.layers import Dropout, Linear, layer_norm


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int = 28
  patch_size: int = 4
  num_channels: int = 1
  hidden_size: int = 64
  num_layers: int = 4
  num_heads: int = 4
  intermediate_size: int = 128
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  initializer_range: float = 0.02
  dtype: str = "float32"

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ConfigError(f"model.vit: image_size={self.image_size} is not a multiple of "
                        f"patch_size={self.patch_size}")
    if self.hidden_size % self.num_heads:
      raise ConfigError(f"model.vit: hidden_size={self.hidden_size} is not divisible by "
                        f"num_heads={self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def hf_export_problem(self) -> str | None:
    """Why this encoder has no Hugging Face layout to export to."""
    return "the encoder is a ViTConfig, which has no Hugging Face layout"

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def max_position_embeddings(self) -> int:   # tokens: patches + [CLS]
    return self.num_patches + 1

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "ViTConfig":
    if hf.get("model_type") != "vit":
      raise ConfigError(f"model: config.json has model_type={hf.get('model_type')!r}, "
                        "not 'vit'")
    kwargs = dict(image_size=hf["image_size"], patch_size=hf["patch_size"],
                  num_channels=hf.get("num_channels", 3), hidden_size=hf["hidden_size"],
                  num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                  intermediate_size=hf["intermediate_size"],
                  layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                  initializer_range=hf.get("initializer_range", 0.02))
    kwargs.update(overrides)
    return cls(**kwargs)


def _norm(cfg: ViTConfig, name: str):
  return layer_norm(cfg.layer_norm_eps, name, "float32")  # cfg.dtype: the matmuls


class ViTBlock(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    h = SelfAttention(cfg, name="attention")(_norm(cfg, "norm_before")(x), mask,
                                             deterministic)
    x = x + Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
    h = _norm(cfg, "norm_after")(x)
    h = nn.gelu(Linear((cfg.intermediate_size,), ("embed", "mlp"),
                       init_std=cfg.initializer_range, dtype=cfg.dtype,
                       name="intermediate")(h), approximate=False)
    h = Linear((cfg.hidden_size,), ("mlp", "embed"), init_std=cfg.initializer_range,
               dtype=cfg.dtype, name="output")(h)
    x = x + Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("activation_batch", "activation_length",
                                          "activation_embed"))


class ViTEncoder(nn.Module):
  """Returns (hidden states tuple, token mask): num_layers + 1 states [B, 1 + N, H]."""
  cfg: ViTConfig

  @nn.compact
  def __call__(self, pixels, *, deterministic: bool = True):
    cfg = self.cfg
    b, height, width, c = pixels.shape
    if (height, width, c) != (cfg.image_size, cfg.image_size, cfg.num_channels):
      raise ValueError(f"images are {height}x{width}x{c}; the model takes "
                       f"{cfg.image_size}x{cfg.image_size}x{cfg.num_channels}")
    p = cfg.patch_size
    g = cfg.image_size // p
    patches = pixels.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(
        b, g * g, p, p, c)
    x = Linear((cfg.hidden_size,), (None, None, None, "embed"), in_dims=3,
               init_std=cfg.initializer_range, dtype=cfg.dtype, name="patch_embedding")(
                   patches.astype(jnp.float32))
    cls = self.param("cls_token", nn.with_logical_partitioning(
        nn.initializers.normal(cfg.initializer_range), (None, "embed")), (1, cfg.hidden_size))
    pos = self.param("position_embeddings", nn.with_logical_partitioning(
        nn.initializers.normal(cfg.initializer_range), (None, "embed")),
        (g * g + 1, cfg.hidden_size))
    x = jnp.concatenate([jnp.broadcast_to(cls[None], (b, 1, cfg.hidden_size)).astype(x.dtype),
                         x], axis=1) + pos[None].astype(x.dtype)
    x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    mask = jnp.ones((b, g * g + 1), jnp.int32)
    final = _norm(cfg, "final_norm")
    hidden = [x]
    for i in range(cfg.num_layers):
      x = ViTBlock(cfg, name=f"layer_{i}")(x, mask, deterministic)
      hidden.append(final(x))
    return tuple(hidden), mask


def vit_hf_to_flax(tensors: dict[str, np.ndarray], cfg: ViTConfig) -> dict:
  """Hugging Face ViTModel tensors (with or without the 'vit.' prefix) -> {'encoder':
  ...} for `ViTEncoder`."""
  t = {k.removeprefix("vit."): np.asarray(v, np.float32) for k, v in tensors.items()}
  h, nh, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim

  def take(name, shape):
    if name not in t:
      raise ModelLoadError(f"ViT weights: tensor {name!r} is missing")
    if t[name].shape != shape:
      raise ModelLoadError(f"ViT weights: {name} has shape {t[name].shape}, the config "
                           f"needs {shape}")
    return t[name]

  p, c = cfg.patch_size, cfg.num_channels
  conv = take("embeddings.patch_embeddings.projection.weight", (h, c, p, p))
  enc = {
      "patch_embedding": {"kernel": conv.transpose(2, 3, 1, 0),
                          "bias": take("embeddings.patch_embeddings.projection.bias", (h,))},
      "cls_token": take("embeddings.cls_token", (1, 1, h))[0],
      "position_embeddings": take("embeddings.position_embeddings",
                                  (1, cfg.num_patches + 1, h))[0],
      "final_norm": {"scale": take("layernorm.weight", (h,)),
                     "bias": take("layernorm.bias", (h,))}}
  for i in range(cfg.num_layers):
    # transformers >= 5 names (layers.N.attention.q_proj, mlp.fc1), or the names the
    # published checkpoints carry (encoder.layer.N.attention.attention.query, ...).
    new, old = f"layers.{i}.", f"encoder.layer.{i}."
    if f"{new}attention.q_proj.weight" in t:
      names = {"query": "attention.q_proj", "key": "attention.k_proj",
               "value": "attention.v_proj", "output": "attention.o_proj",
               "intermediate": "mlp.fc1", "dense_out": "mlp.fc2"}
      q = new
    else:
      names = {"query": "attention.attention.query", "key": "attention.attention.key",
               "value": "attention.attention.value", "output": "attention.output.dense",
               "intermediate": "intermediate.dense", "dense_out": "output.dense"}
      q = old
    att = {}
    for name in ("query", "key", "value"):
      att[name] = {"kernel": take(f"{q}{names[name]}.weight", (h, h)).T.reshape(h, nh, hd),
                   "bias": take(f"{q}{names[name]}.bias", (h,)).reshape(nh, hd)}
    att["output"] = {"kernel": take(f"{q}{names['output']}.weight", (h, h)).T.reshape(nh, hd, h),
                     "bias": take(f"{q}{names['output']}.bias", (h,))}
    inter = cfg.intermediate_size
    enc[f"layer_{i}"] = {
        "attention": att,
        "norm_before": {"scale": take(f"{q}layernorm_before.weight", (h,)),
                        "bias": take(f"{q}layernorm_before.bias", (h,))},
        "norm_after": {"scale": take(f"{q}layernorm_after.weight", (h,)),
                       "bias": take(f"{q}layernorm_after.bias", (h,))},
        "intermediate": {"kernel": take(f"{q}{names['intermediate']}.weight", (inter, h)).T,
                         "bias": take(f"{q}{names['intermediate']}.bias", (inter,))},
        "output": {"kernel": take(f"{q}{names['dense_out']}.weight", (h, inter)).T,
                   "bias": take(f"{q}{names['dense_out']}.bias", (h,))}}
  return {"encoder": enc}
