"""A BERT encoder in Flax Linen that returns every layer's hidden states.

The layout follows Hugging Face's `BertModel` (post-LayerNorm blocks, exact-erf GELU,
absolute position embeddings) so that its safetensors load by renaming alone
(`jaxembed.models.loading`). Every parameter carries logical axis names, so the same
module shards under any mesh through the rules in `jaxembed.sharding`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.models.layers import Dropout, Linear, attention, layer_norm
from jaxembed.models.weights import WeightEntry, same


ATTENTION_IMPLS = ("auto", "xla", "cudnn")
FAMILIES = ("bert", "mpnet")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02
  dtype: str = "float32"       # matmul inputs (bfloat16: float32 params and accumulation)
  # auto: cuDNN's fused attention on GPU for bfloat16/float16 when no attention
  # dropout applies, else `attention` below (xla); cudnn forces the fused kernel.
  attention: str = "auto"
  remat: bool = False          # rematerialise each block in the backward pass
  scan_layers: bool = False    # nn.scan over the blocks (params stacked on 'layers')
  # MPNet (family 'mpnet'): position ids count the real tokens from pad_token_id + 1,
  # no token types, and every block's attention adds one learned bias per head and
  # relative-position bucket (T5's buckets: `relative_buckets`, `relative_max_distance`).
  family: str = "bert"
  pad_token_id: int = 0
  relative_buckets: int = 0
  relative_max_distance: int = 128

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ConfigError(f"model: family={self.family!r}; valid: {list(FAMILIES)}")
    if self.attention not in ATTENTION_IMPLS:
      raise ConfigError(f"model: attention={self.attention!r}; valid: {list(ATTENTION_IMPLS)}")
    if self.hidden_size % self.num_heads:
      raise ConfigError(
          f"model: hidden_size={self.hidden_size} is not divisible by "
          f"num_heads={self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "BertConfig":
    """Builds the config from a Hugging Face `config.json` dict."""
    kind = hf.get("model_type", "bert")
    if kind not in FAMILIES:
      raise ConfigError(
          f"model: config.json has model_type={kind!r}; the BERT encoder reads "
          f"{list(FAMILIES)} checkpoints")
    if hf.get("hidden_act", "gelu") != "gelu":
      raise ConfigError(f"model: hidden_act={hf['hidden_act']!r} is not supported (gelu)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ConfigError("model: only absolute position embeddings are supported")
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    if kind == "mpnet":
      kwargs.update(family="mpnet", type_vocab_size=0, pad_token_id=hf.get("pad_token_id", 1),
                    relative_buckets=hf.get("relative_attention_num_buckets", 32))
    kwargs.update(overrides)
    return cls(**kwargs)

  def hf_export_problem(self) -> str | None:
    """Why this encoder has no Hugging Face layout to export to (None: it has one)."""
    return None

  def hf_tokenizer_config(self, max_length: int, pad_token: str,
                          tokenizer_json: dict) -> dict[str, Any]:
    """The `tokenizer_config.json` transformers reads beside this encoder's weights."""
    del pad_token, tokenizer_json
    if self.family == "mpnet":
      return {"tokenizer_class": "MPNetTokenizer", "model_max_length": max_length,
              "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
              "cls_token": "<s>", "unk_token": "[UNK]", "pad_token": "<pad>",
              "mask_token": "<mask>", "do_lower_case": True}
    return {"tokenizer_class": "BertTokenizer", "model_max_length": max_length,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]"}

  def to_hf(self) -> dict[str, Any]:
    """The inverse of `from_hf`: a `config.json` dict that `transformers` reads."""
    out = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "intermediate_size": self.intermediate_size,
        "max_position_embeddings": self.max_position_embeddings,
        "type_vocab_size": self.type_vocab_size,
        "layer_norm_eps": self.layer_norm_eps,
        "hidden_dropout_prob": self.hidden_dropout,
        "attention_probs_dropout_prob": self.attention_dropout,
        "initializer_range": self.initializer_range,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": self.pad_token_id,
    }
    if self.family == "mpnet":
      del out["type_vocab_size"], out["position_embedding_type"]
      out.update(architectures=["MPNetModel"], model_type="mpnet", bos_token_id=0,
                 eos_token_id=2, relative_attention_num_buckets=self.relative_buckets)
    return out


def _dense(features, axes, cfg: BertConfig, name: str, in_dims: int = 1):
  features = features if isinstance(features, tuple) else (features,)
  return Linear(features, axes, in_dims=in_dims, init_std=cfg.initializer_range,
                dtype=cfg.dtype, name=name)


def _layer_norm(cfg: BertConfig, name: str):
  return layer_norm(cfg.layer_norm_eps, name, "float32")


def _use_cudnn(impl: str, dtype: str, dropout_rate: float) -> bool:
  if impl == "cudnn":
    if dropout_rate > 0.0:
      raise ConfigError("model: attention='cudnn' cannot apply attention dropout; set "
                        "attention_dropout=0 or attention='xla'")
    return True
  return (impl == "auto" and dropout_rate == 0.0 and jax.default_backend() == "gpu"
          and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16))


class SelfAttention(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, bias=None):
    """`bias` [batch or 1, heads, queries, keys]: added to the attention logits."""
    cfg = self.cfg
    shape = (cfg.num_heads, cfg.head_dim)
    q = _dense(shape, ("embed", "heads", "kv"), cfg, "query")(x)
    k = _dense(shape, ("embed", "heads", "kv"), cfg, "key")(x)
    v = _dense(shape, ("embed", "heads", "kv"), cfg, "value")(x)
    # mask: [batch, keys] -> [batch, 1 (heads), 1 (queries), keys]; a mask given as
    # [batch, 1, queries, keys] (packed rows: each token sees its own text) is used as is
    key_mask = (mask if mask.ndim == 4 else mask[:, None, None, :]).astype(bool)
    drop = 0.0 if deterministic else cfg.attention_dropout
    if _use_cudnn(getattr(cfg, "attention", "auto"), cfg.dtype, drop):
      dt = jnp.dtype(cfg.dtype)
      out = jax.nn.dot_product_attention(
          q.astype(dt), k.astype(dt), v.astype(dt), mask=key_mask, implementation="cudnn",
          bias=None if bias is None else bias.astype(dt))
      out = out.astype(jnp.float32)
    else:
      out = attention(q, k, v, key_mask, dtype=cfg.dtype, dropout_rate=drop,
                      dropout_rng=self.make_rng("dropout") if drop > 0.0 else None,
                      bias=bias)
    return _dense(cfg.hidden_size, ("heads", "kv", "embed"), cfg, "output",
                  in_dims=2)(out)


class BertLayer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, bias=None):
    cfg = self.cfg
    h = SelfAttention(cfg, name="attention")(x, mask, deterministic, bias)
    h = Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
    x = _layer_norm(cfg, "attention_norm")(x + h)
    h = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, "intermediate")(x)
    h = nn.gelu(h, approximate=False)
    h = _dense(cfg.hidden_size, ("mlp", "embed"), cfg, "output")(h)
    h = Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
    x = _layer_norm(cfg, "output_norm")(x + h)
    return nn.with_logical_constraint(x, ("activation_batch", "activation_length",
                                          "activation_embed"))


class BertEncoder(nn.Module):
  """Returns a tuple of `num_layers + 1` hidden states, each [batch, length, hidden].

  Index 0 is the embedding output and index i the output of block i, so a sub-model
  "truncated to layer i" (2D Matryoshka, Starbucks) is read from index i of one pass.
  `depth` < num_layers computes only the first `depth` blocks (early exit: a 2-layer
  sub-model costs a third of the 6-layer model) and returns depth + 1 states; with
  scan_layers every block runs and the first depth + 1 states are returned.
  """
  cfg: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, depth: int | None = None,
               position_ids=None, segment_ids=None):
    """`segment_ids` (packed rows, data/packing.py): tokens attend only to tokens of
    their own segment (0 = padding, attended by none); `position_ids` default to
    0..length-1."""
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                       f"{cfg.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    dtype = jnp.float32  # embeddings and the residual stream; cfg.dtype is the matmuls'
    word = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                    embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
                    name="word_embeddings")
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype,
                   embedding_init=nn.with_logical_partitioning(init, (None, "embed")),
                   name="position_embeddings")
    bias = None
    if cfg.family == "mpnet":
      # Relative positions from the token indices (the packed rows' own positions),
      # as MPNet computes them; absolute ones count real tokens from pad_token_id + 1.
      index = jnp.arange(length)[None, :] if position_ids is None else position_ids
      table = self.param("relative_attention_bias", nn.with_logical_partitioning(
          init, (None, "heads")), (cfg.relative_buckets, cfg.num_heads), jnp.float32)
      buckets = relative_position_bucket(index[:, None, :] - index[:, :, None],
                                         cfg.relative_buckets, cfg.relative_max_distance)
      bias = table[buckets].transpose(0, 3, 1, 2)           # [B or 1, heads, Tq, Tk]
      if position_ids is None:
        real = attention_mask.astype(jnp.int32)
        position_ids = jnp.where(real > 0, jnp.cumsum(real, axis=1), 0) + cfg.pad_token_id
      else:
        position_ids = position_ids + cfg.pad_token_id + 1
    elif position_ids is None:
      position_ids = jnp.arange(length)[None, :]
    if segment_ids is not None:
      attention_mask = ((segment_ids[:, :, None] == segment_ids[:, None, :])
                        & (segment_ids[:, None, :] > 0))[:, None]
    x = word(input_ids) + pos(position_ids)
    if cfg.type_vocab_size:
      typ = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=dtype,
                     embedding_init=nn.with_logical_partitioning(init, (None, "embed")),
                     name="token_type_embeddings")
      x = x + typ(token_type_ids)
    x = _layer_norm(cfg, "embeddings_norm")(x)
    x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    if cfg.scan_layers:
      scan = nn.scan(_ScanLayer, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=nn.broadcast, length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
      _, outs = scan(cfg, deterministic, name="layers")(x, attention_mask, bias)
      return (x,) + tuple(outs[i] for i in range(check_depth(depth, cfg.num_layers)))
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if cfg.remat else BertLayer
    hidden = [x]
    for i in range(check_depth(depth, cfg.num_layers)):
      x = layer_cls(cfg, name=f"layer_{i}")(x, attention_mask, deterministic, bias)
      hidden.append(x)
    return tuple(hidden)


def relative_position_bucket(relative, num_buckets: int, max_distance: int):
  """T5's (and MPNet's) bucket of each relative position (key index - query index):
  half the buckets per direction, exact up to a quarter of them, then logarithmic up
  to `max_distance`, computed in float32 as transformers does."""
  half = num_buckets // 2
  n = -relative
  out = (n < 0).astype(jnp.int32) * half
  n = jnp.abs(n)
  exact = half // 2
  scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact)
            / np.float32(np.log(max_distance / exact)) * (half - exact))
  large = jnp.minimum(exact + scaled.astype(jnp.int32), half - 1)
  return out + jnp.where(n < exact, n, large)


def check_depth(depth: int | None, num_layers: int) -> int:
  """The number of blocks an early-exit pass computes (None: all)."""
  if depth is None:
    return num_layers
  if not 1 <= depth <= num_layers:
    raise ValueError(f"depth={depth} is out of range; valid: 1..{num_layers}")
  return depth


class _ScanLayer(nn.Module):
  """A block with the (carry, x) -> (carry, out) signature nn.scan wants."""
  cfg: BertConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask, bias=None):
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.cfg.remat else BertLayer
    y = layer_cls(self.cfg, name="block")(x, mask, self.deterministic, bias)
    return y, y


def hf_weight_table(cfg: BertConfig) -> list[WeightEntry]:
  """HF tensor name -> Flax path under `encoder`, with the reshape each way.

  torch Linear stores [out, in]; Flax kernels are [in, out], with the attention
  projections split into (heads, head_dim). MPNet names its tensors its own way
  (attention.attn.q, ..., one relative-attention bias table) and has no token types.
  """
  h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  mpnet = cfg.family == "mpnet"
  e = [
      WeightEntry("embeddings.word_embeddings.weight", ("word_embeddings", "embedding"), same, same),
      WeightEntry("embeddings.position_embeddings.weight", ("position_embeddings", "embedding"), same, same),
      WeightEntry("embeddings.LayerNorm.weight", ("embeddings_norm", "scale"), same, same),
      WeightEntry("embeddings.LayerNorm.bias", ("embeddings_norm", "bias"), same, same),
  ]
  if cfg.type_vocab_size:
    e.append(WeightEntry("embeddings.token_type_embeddings.weight",
                         ("token_type_embeddings", "embedding"), same, same))
  if mpnet:
    e.append(WeightEntry("encoder.relative_attention_bias.weight",
                         ("relative_attention_bias",), same, same))
  # (HF name of q, k, v, the attention output, and its LayerNorm) per family
  if mpnet:
    qkv = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v"}
    out, out_norm = "attention.attn.o", "attention.LayerNorm"
  else:
    qkv = {p: f"attention.self.{p}" for p in ("query", "key", "value")}
    out, out_norm = "attention.output.dense", "attention.output.LayerNorm"
  for i in range(cfg.num_layers):
    hf, fx = f"encoder.layer.{i}.", f"layer_{i}"
    for proj, theirs in qkv.items():
      e.append(WeightEntry(f"{hf}{theirs}.weight", (fx, "attention", proj, "kernel"),
                      lambda w: w.T.reshape(h, n, d), lambda k: k.reshape(h, h).T))
      e.append(WeightEntry(f"{hf}{theirs}.bias", (fx, "attention", proj, "bias"),
                      lambda b: b.reshape(n, d), lambda b: b.reshape(h)))
    e += [
        WeightEntry(f"{hf}{out}.weight", (fx, "attention", "output", "kernel"),
               lambda w: w.T.reshape(n, d, h), lambda k: k.reshape(h, h).T),
        WeightEntry(f"{hf}{out}.bias", (fx, "attention", "output", "bias"), same, same),
        WeightEntry(f"{hf}{out_norm}.weight", (fx, "attention_norm", "scale"), same, same),
        WeightEntry(f"{hf}{out_norm}.bias", (fx, "attention_norm", "bias"), same, same),
        WeightEntry(f"{hf}intermediate.dense.weight", (fx, "intermediate", "kernel"), np.transpose, np.transpose),
        WeightEntry(f"{hf}intermediate.dense.bias", (fx, "intermediate", "bias"), same, same),
        WeightEntry(f"{hf}output.dense.weight", (fx, "output", "kernel"), np.transpose, np.transpose),
        WeightEntry(f"{hf}output.dense.bias", (fx, "output", "bias"), same, same),
        WeightEntry(f"{hf}output.LayerNorm.weight", (fx, "output_norm", "scale"), same, same),
        WeightEntry(f"{hf}output.LayerNorm.bias", (fx, "output_norm", "bias"), same, same),
    ]
  return e
