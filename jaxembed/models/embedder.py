"""The embedder interface, and the single-tower text embedder (encoder + pooling).

Every model a run trains (`Embedder`, `two_tower.TwoTower`) implements the same
interface, so the train step, the loop, the inputs and the workdir never ask which
model they hold:

* `example_inputs()`: positional arguments for `init`.
* `encode_pairs(batch, deterministic=...)` (a Linen method, `apply(..., method=...)`):
  the pooled (anchor, positive[, negatives]) vectors of a training batch, each
  [batch, output_layers, output_width] (negatives [batch, k, layers, width]).
* `encode_queries(inputs)` / `encode_documents(inputs)` (Linen methods): one side
  of an evaluation, [batch, output_layers, output_width].
* `output_layers`, `output_width`: the grid the objectives and evaluations see.
* `up_to(depth)`: the same model (same parameters) computing only what layers
  1..depth need, for evaluation and `encode(layer=...)` (early exit).
* `text_config`: the text encoder's config; `query_modality`: 'text' | 'image';
  `symmetric`: whether queries and documents go through the same encoder;
  `pretrained_paths`: where in the parameter tree the pretrained text encoder's
  `{'encoder': ...}` goes; `supports_hard_negatives`, `supports_grad_cache`,
  `supports_packing` (packed training batches: data/packing.py),
  `supports_early_exit` (a train step computing only the layers its loss reads);
  `centred_exits`, `exit_components`: the exits' statistics the params hold
  (train/centring.py; False and 0 for a model without them); `multivector`: whether
  it gives token matrices instead of pooled vectors (models/multivector.py); `head`,
  `head_norm`: a pretrained folder's Dense chain and LayerNorm after pooling, loaded
  with the encoder (loaders.folder_head).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.models.bert import BertConfig, BertEncoder
from jaxembed.models.decoder import DecoderConfig, DecoderEncoder
from jaxembed.models.pooling import Pooler
from jaxembed.models.vit import ViTConfig

ENCODER_CONFIGS = {c.__name__: c for c in (BertConfig, DecoderConfig, ViTConfig)}


def make_encoder(cfg, name: str = "encoder") -> nn.Module:
  """The Linen encoder for a config: BertConfig -> BertEncoder, DecoderConfig ->
  DecoderEncoder. Each returns a tuple of num_layers + 1 hidden states."""
  if isinstance(cfg, BertConfig):
    return BertEncoder(cfg, name=name)
  if isinstance(cfg, DecoderConfig):
    return DecoderEncoder(cfg, name=name)
  raise TypeError(f"no text encoder for {type(cfg).__name__}")


def encoder_config(kind: str, fields: dict, source: str = "encoder_config"):
  """An encoder config saved as (class name, fields): how saved models record it,
  each size checked first (`check_encoder_config`)."""
  check_encoder_config(ENCODER_CONFIGS[kind], fields, source)
  try:
    return ENCODER_CONFIGS[kind](**fields)
  except (TypeError, ValueError, ZeroDivisionError, ConfigError) as e:
    raise ModelLoadError(f"{source}: {e}") from e


# Sizes an encoder config may declare: checked before anything is allocated from them.
SIZE_LIMITS = {"vocab_size": 2**22, "hidden_size": 2**16, "num_layers": 1024,
               "num_heads": 1024, "num_kv_heads": 1024, "intermediate_size": 2**18,
               "max_position_embeddings": 2**20, "type_vocab_size": 1024}


def check_encoder_config(cls, fields: dict, source: str) -> None:
  """Refuses the fields of an encoder config of class `cls` (read from `source`) with
  a size that is not a whole number in its range, a float that is not finite, or heads
  that do not divide the width, before anything is built or allocated from them."""
  for f in dataclasses.fields(cls):
    if f.name not in fields:
      continue
    value, high = fields[f.name], SIZE_LIMITS.get(f.name, 2**20)
    if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)
                            or not 0 <= value <= high):
      raise ModelLoadError(f"{source}: {f.name}={value!r} must be a whole number in "
                           f"[0, {high}]")
    if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
      raise ModelLoadError(f"{source}: {f.name}={value!r} must be a finite number")
  def get(name):
    return fields.get(name, getattr(cls, name, 1))
  if not (get("num_layers") and get("hidden_size") and get("num_heads")
          and (fields.get("head_size") or get("hidden_size") % get("num_heads") == 0)):
    raise ModelLoadError(f"{source}: hidden_size={get('hidden_size')} with num_heads="
                         f"{get('num_heads')} and {get('num_layers')} layers is not a model")


def text_inputs(batch: int = 1, length: int = 8) -> dict:
  ids = jnp.zeros((batch, length), jnp.int32)
  return {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}


CENTER = "exit_center"          # the centred exits' parameter (Embedder.centred_exits)
COMPONENTS = "exit_components"  # their removed directions (Embedder.exit_components)
HEAD = "head"                    # the linear map after pooling (Embedder.head)
HEAD_NORM = "head_norm"          # the LayerNorm after it (Embedder.head_norm)
HEAD_NORM_EPS = 1e-5             # torch.nn.LayerNorm's, as sentence-transformers' module


class Embedder(nn.Module):
  """Pools the hidden state of each layer in `layers` (1-based) with one encoder pass.

  Returns [batch, len(layers), hidden]; truncation to a Matryoshka dim happens in the
  loss or in `encode`, since all dims share one vector. `pool_mask` (default: the
  attention mask) selects the pooled tokens, so instruction tokens can be attended to
  without being pooled.
  """
  encoder_config: Any            # BertConfig | DecoderConfig
  pooling: str = "mean"
  layers: tuple[int, ...] = ()
  pool_heads: int = 8
  pool_latents: int = 64
  # Early exit: compute only the blocks up to the deepest of `layers` (inference;
  # the parameters of the model are unchanged, the deeper blocks' are not read).
  early_exit: bool = False
  # Centred exits: params['exit_center'] [num_layers, width] is subtracted from each
  # layer's pooled vector (a row of zeros changes nothing). Shallow layers of a
  # pretrained encoder share large constant components (anisotropy) that dominate
  # their cosine similarities; training estimates each layer's mean over its texts
  # (`train/centring.py`) and keeps the last layer's row at zero.
  centred_exits: bool = False
  # With centred exits, also remove each layer's top `exit_components` principal
  # directions (params['exit_components'] [num_layers, k, width], orthonormal rows, or
  # zeros: nothing removed): v -> c - U^T U c with c = v - mean, "all-but-the-top" (Mu
  # and Viswanath 2018). The last layer's rows stay zero.
  exit_components: int = 0
  # A linear map of the pooled vector, params['head'] [width, width] (identity at
  # init): the Dense modules after pooling of a sentence-transformers folder, composed
  # (EmbeddingGemma: 768 -> 3072 -> 768), applied at every exit.
  head: bool = False
  # A LayerNorm of the (head's) vector, params['head_norm'] {'scale', 'bias'} [width]:
  # sentence-transformers' LayerNorm module, over the first `head_width` coordinates
  # (0: all; the rest stay zero) with eps 1e-5.
  head_norm: bool = False
  head_width: int = 0

  query_modality = "text"
  symmetric = True               # queries and documents through the same encoder
  supports_hard_negatives = True
  supports_grad_cache = True
  supports_early_exit = True     # the train step may stop at the deepest layer it reads
  multivector = False            # pooled vectors, not token matrices
  pretrained_paths = (("encoder",),)

  @nn.compact
  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True,
               pool_mask=None, packed=None, token_index=None):
    """`packed` ({'input_ids', 'segment_ids', 'position_ids'} [rows, row_length]) and
    `token_index` [batch, length] (data/packing.py): the encoder runs on the packed
    rows, and each text's hidden states are gathered back into the padded layout of
    `input_ids` / `attention_mask` before pooling (`input_ids` itself is not read)."""
    layers = self.layers or tuple(range(1, self.encoder_config.num_layers + 1))
    depth = max(layers) if self.early_exit else None
    encoder = make_encoder(self.encoder_config)
    if packed is None:
      hidden = encoder(input_ids, attention_mask, deterministic=deterministic, depth=depth)
    else:
      rows = encoder(packed["input_ids"], None, deterministic=deterministic, depth=depth,
                     position_ids=packed["position_ids"],
                     segment_ids=packed["segment_ids"])
      hidden = tuple(h.reshape(-1, h.shape[-1])[token_index] for h in rows)
    mask = attention_mask if pool_mask is None else pool_mask * attention_mask
    pooled = Pooler(self.pooling, self.pool_heads, self.pool_latents, name="pooler")(
        hidden, mask, layers, num_layers=self.encoder_config.num_layers)
    if self.centred_exits:
      centre = self.param(CENTER, nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (None, "embed")),
          (self.encoder_config.num_layers, self.encoder_config.hidden_size), jnp.float32)
      pooled = pooled - centre[jnp.asarray(layers) - 1][None].astype(pooled.dtype)
    if self.exit_components:
      if not self.centred_exits:
        raise ValueError("Embedder.exit_components needs centred_exits")
      u = self.param(COMPONENTS, nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (None, None, "embed")),
          (self.encoder_config.num_layers, self.exit_components,
           self.encoder_config.hidden_size),
          jnp.float32)[jnp.asarray(layers) - 1]
      c = pooled.astype(jnp.float32)
      coords = jnp.einsum("blw,lkw->blk", c, u, precision="highest")
      pooled = (c - jnp.einsum("blk,lkw->blw", coords, u, precision="highest")
                ).astype(pooled.dtype)
    if self.head:
      width = self.encoder_config.hidden_size
      kernel = self.param(HEAD, nn.with_logical_partitioning(
          lambda key, shape, dtype: jnp.eye(shape[0], dtype=dtype), (None, "embed")),
          (width, width), jnp.float32)
      pooled = jnp.einsum("blw,wv->blv", pooled.astype(jnp.float32), kernel,
                          precision="highest").astype(pooled.dtype)
    if self.head_norm:
      width = self.encoder_config.hidden_size
      scale = self.param(f"{HEAD_NORM}_scale", nn.with_logical_partitioning(
          nn.initializers.ones_init(), ("embed",)), (width,), jnp.float32)
      bias = self.param(f"{HEAD_NORM}_bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), ("embed",)), (width,), jnp.float32)
      n = self.head_width or width
      live = (jnp.arange(width) < n).astype(jnp.float32)
      x = pooled.astype(jnp.float32) * live
      mean = jnp.sum(x, axis=-1, keepdims=True) / n
      var = jnp.sum(jnp.square((x - mean) * live), axis=-1, keepdims=True) / n
      pooled = (((x - mean) * jax.lax.rsqrt(var + HEAD_NORM_EPS) * scale + bias) * live
                ).astype(pooled.dtype)
    return nn.with_logical_constraint(pooled, ("activation_batch", None, "activation_embed"))

  # ------------------------------------------------------------------ interface

  @property
  def text_config(self):
    return self.encoder_config

  @property
  def supports_packing(self) -> bool:
    """Packed training batches (data.pack_length): the BERT encoder takes segment ids;
    the causal decoder does not."""
    return isinstance(self.encoder_config, BertConfig)

  @property
  def output_layers(self) -> int:
    return len(self.layers) if self.layers else self.encoder_config.num_layers

  def up_to(self, depth: int) -> "Embedder":
    """Layers 1..depth, computing only the first `depth` blocks."""
    return self.clone(layers=tuple(range(1, depth + 1)), early_exit=True)

  @property
  def output_width(self) -> int:
    return self.encoder_config.hidden_size

  def example_inputs(self) -> tuple:
    x = text_inputs()
    return x["input_ids"], x["attention_mask"]

  def encode_pairs(self, batch, *, deterministic: bool = True):
    """Anchors, positives and (if the batch has them) k hard negatives per pair, in
    one forward pass (one larger matmul per layer)."""
    parts = [batch["anchor"], batch["positive"]]
    negatives = batch.get("negatives")
    if negatives is not None:
      b, k, t = negatives["input_ids"].shape
      parts.append({key: v.reshape(b * k, t) for key, v in negatives.items()})
    ids = jnp.concatenate([p["input_ids"] for p in parts])
    mask = jnp.concatenate([p["attention_mask"] for p in parts])
    # Instruction tokens (anchors with data.query_instruction) are attended, not pooled.
    pool = (jnp.concatenate([p.get("pool_mask", p["attention_mask"]) for p in parts])
            if any("pool_mask" in p for p in parts) else None)
    # Packed batches (data.pack_length): the texts' places in the packed rows.
    index = (jnp.concatenate([p["token_index"] for p in parts])
             if "packed" in batch else None)
    out = self(ids, mask, deterministic=deterministic, pool_mask=pool,
               packed=batch.get("packed"), token_index=index)
    n = batch["anchor"]["input_ids"].shape[0]
    if negatives is None:
      return out[:n], out[n:2 * n]
    return out[:n], out[n:2 * n], out[2 * n:].reshape(n, k, *out.shape[1:])

  def encode_documents(self, inputs, deterministic: bool = True):
    return self(inputs["input_ids"], inputs["attention_mask"],
                deterministic=deterministic, pool_mask=inputs.get("pool_mask"))

  def encode_queries(self, inputs, deterministic: bool = True):
    return self.encode_documents(inputs, deterministic)
