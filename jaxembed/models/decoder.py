"""A decoder-LLM text encoder in the Llama / Qwen2 shape, used as an embedder.

RMSNorm pre-norm blocks, rotary position embeddings (the half-split "rotate_half"
layout of Hugging Face's Llama), a SwiGLU MLP and grouped-query attention. The one
switch the embedding papers argue over is `attention`: "causal" (as pretrained; pool
the last token) or "bidirectional" (NV-Embed, LLM2Vec, KaLM-V2: the causal mask is
dropped for contrastive training; pool by mean or latent attention).

Padding may be on either side: positions are counted over real tokens only
(cumsum of the mask), so a left-padded and a right-padded copy of a text get the same
hidden states on their real tokens.

Hidden states: index 0 is the embedding output, index i the output of block i passed
through the final RMSNorm, so the sub-model "truncated to layer i" is the first i
blocks plus the final norm (index num_layers is the model's normal output).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.models.bert import check_depth
from jaxembed.models.layers import Dropout, Linear, attention
from jaxembed.models.weights import WeightEntry, linear, same

ATTENTION = ("causal", "bidirectional")
FAMILIES = ("llama", "gemma3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int = 32000
  hidden_size: int = 256
  num_layers: int = 4
  num_heads: int = 8
  num_kv_heads: int = 2
  intermediate_size: int = 688
  max_position_embeddings: int = 2048
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  attention: str = "causal"            # causal | bidirectional
  qkv_bias: bool = False               # Qwen2: True
  tie_embeddings: bool = False         # unused by an embedder (no LM head)
  initializer_range: float = 0.02
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: str = "float32"
  remat: bool = False                  # rematerialise each block in the backward pass
  scan_layers: bool = False            # nn.scan over the blocks (one compiled block)
  # Gemma 3 (family 'gemma3', e.g. EmbeddingGemma): RMSNorm scales as 1 + w, embeddings
  # times sqrt(hidden), q/k RMSNorm, norms after attention and MLP as well as before,
  # a GELU(tanh)-gated MLP, heads of `head_size` (not hidden / heads), and on the
  # layers in `sliding_layers` attention within `sliding_window` positions with RoPE
  # base `rope_local_theta` (the others: `rope_theta`).
  family: str = "llama"
  head_size: int = 0                   # 0: hidden_size // num_heads
  sliding_window: int = 0
  sliding_layers: tuple = ()
  rope_local_theta: float = 10000.0

  def __post_init__(self):
    if self.attention not in ATTENTION:
      raise ConfigError(f"model.decoder.attention={self.attention!r}; valid values: "
                        f"{list(ATTENTION)}")
    if self.family not in FAMILIES:
      raise ConfigError(f"model: family={self.family!r}; valid: {list(FAMILIES)}")
    if not self.head_size and self.hidden_size % self.num_heads:
      raise ConfigError(f"model: hidden_size={self.hidden_size} is not divisible by "
                        f"num_heads={self.num_heads}")
    if self.family == "gemma3" and self.scan_layers:
      raise ConfigError("model: scan_layers is not supported for Gemma 3 (its layers "
                        "differ: sliding and global attention)")
    object.__setattr__(self, "sliding_layers", tuple(int(i) for i in self.sliding_layers))
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"model: num_heads={self.num_heads} is not a multiple of "
                        f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"model: head_dim={self.head_dim} must be even for RoPE")

  @property
  def head_dim(self) -> int:
    return self.head_size or self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "DecoderConfig":
    """From a Hugging Face Llama / Qwen2 / Mistral / Gemma 3 text `config.json` dict."""
    kind = hf.get("model_type")
    if kind == "gemma3_text":
      return cls._from_gemma3(hf, **overrides)
    if kind not in ("llama", "qwen2", "mistral"):
      raise ConfigError(f"model: config.json has model_type={kind!r}; the decoder "
                        "encoder reads 'llama', 'qwen2', 'mistral' or 'gemma3_text'")
    if hf.get("hidden_act", "silu") != "silu":
      raise ConfigError(f"model: hidden_act={hf['hidden_act']!r} is not supported (silu)")
    if hf.get("rope_scaling"):
      raise ConfigError("model: rope_scaling is not supported")
    kwargs = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        qkv_bias=kind == "qwen2" or bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=hf.get("initializer_range", 0.02))
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def _from_gemma3(cls, hf: dict[str, Any], **overrides) -> "DecoderConfig":
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
      raise ConfigError(f"model: hidden_activation={hf['hidden_activation']!r} is not "
                        "supported (gelu_pytorch_tanh)")
    for key in ("rope_scaling", "attn_logit_softcapping"):
      if hf.get(key):
        raise ConfigError(f"model: {key}={hf[key]!r} is not supported")
    if hf.get("query_pre_attn_scalar", hf["head_dim"]) != hf["head_dim"]:
      raise ConfigError(f"model: query_pre_attn_scalar={hf['query_pre_attn_scalar']} "
                        f"differs from head_dim={hf['head_dim']}; not supported")
    types = hf.get("layer_types") or []
    kwargs = dict(
        family="gemma3", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        head_size=hf["head_dim"], intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rope_theta=float(hf.get("rope_theta", 1e6)),
        rope_local_theta=float(hf.get("rope_local_base_freq", 1e4)),
        sliding_window=int(hf.get("sliding_window") or 0),
        sliding_layers=tuple(i for i, t in enumerate(types) if t == "sliding_attention"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6), qkv_bias=bool(hf.get("attention_bias")),
        tie_embeddings=True, initializer_range=hf.get("initializer_range", 0.02),
        attention="bidirectional" if hf.get("use_bidirectional_attention") else "causal")
    kwargs.update(overrides)
    return cls(**kwargs)

  def hf_export_problem(self) -> str | None:
    """Why this encoder has no Hugging Face layout to export to (None: it has one)."""
    if self.family == "gemma3":
      return None                          # Gemma3TextModel has the bidirectional switch
    if self.attention != "causal":
      return ("the decoder attends bidirectionally; transformers' Llama/Qwen2 models are "
              "causal")
    return None

  def hf_tokenizer_config(self, max_length: int, pad_token: str,
                          tokenizer_json: dict) -> dict[str, Any]:
    """The `tokenizer_config.json` transformers reads beside this encoder's weights.
    Positions count real tokens only, so the hidden states do not depend on the padding
    side; causal attention on right padding gives transformers' exact values (its
    default positions ignore left padding). The tokenizer class follows the
    tokenizer.json (transformers otherwise rebuilds the model type's own pipeline from
    the vocabulary): a WordPiece vocabulary is a BertTokenizer. The special tokens the
    tokenizer.json's template adds around a text are named (bos_token before it,
    eos_token after): sentence-transformers leaves a prompt's trailing special token
    out of the prompt's length only when the tokenizer declares it special."""
    wordpiece = tokenizer_json.get("model", {}).get("type") == "WordPiece"
    out = {"tokenizer_class": "BertTokenizer" if wordpiece else "TokenizersBackend",
           "model_max_length": max_length, "padding_side": "right",
           "pad_token": pad_token, "model_input_names": ["input_ids", "attention_mask"]}
    out.update(_template_specials(tokenizer_json))
    return out

  def to_hf(self) -> dict[str, Any]:
    """A `config.json` dict that `transformers` reads: Qwen2 when the q/k/v projections
    have biases, else Llama. Causal attention only (the HF classes have no switch)."""
    if self.family == "gemma3":
      return {
          "architectures": ["Gemma3TextModel"], "model_type": "gemma3_text",
          "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
          "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
          "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
          "intermediate_size": self.intermediate_size,
          "max_position_embeddings": self.max_position_embeddings,
          "rope_theta": self.rope_theta, "rope_local_base_freq": self.rope_local_theta,
          "sliding_window": self.sliding_window,
          "layer_types": ["sliding_attention" if i in self.sliding_layers
                          else "full_attention" for i in range(self.num_layers)],
          "query_pre_attn_scalar": self.head_dim, "rms_norm_eps": self.rms_norm_eps,
          "hidden_activation": "gelu_pytorch_tanh", "attention_bias": self.qkv_bias,
          "use_bidirectional_attention": self.attention == "bidirectional",
          "initializer_range": self.initializer_range, "attention_dropout": 0.0,
          "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1, "dtype": "float32"}
    kind = "qwen2" if self.qkv_bias else "llama"
    return {
        "architectures": ["Qwen2Model" if self.qkv_bias else "LlamaModel"],
        "model_type": kind, "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
        "intermediate_size": self.intermediate_size,
        "max_position_embeddings": self.max_position_embeddings,
        "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_embeddings, "hidden_act": "silu",
        "initializer_range": self.initializer_range, "attention_dropout": 0.0,
        "torch_dtype": "float32",
    }


class RMSNorm(nn.Module):
  """Llama's RMSNorm (x / rms(x) cast back, times w); `offset` (Gemma): times 1 + w in
  float32, w starting at 0."""
  eps: float = 1e-6
  offset: bool = False

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros_init() if self.offset else nn.initializers.ones_init()
    scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)),
                       (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.offset:
      return (x32 * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return (x32.astype(x.dtype) * scale.astype(x.dtype))


def rope(x, positions, theta: float):
  """Rotary embedding, half-split layout: x [B, T, heads, D], positions [B, T]."""
  d = x.shape[-1]
  inv = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))       # [D/2]
  angles = positions[..., None].astype(jnp.float32) * inv                    # [B, T, D/2]
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x1, x2 = x[..., :d // 2], x[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def attention_mask_4d(mask, causal: bool):
  """[B, T] padding mask -> [B, 1, T(queries), T(keys)] booleans."""
  keys = mask.astype(bool)[:, None, None, :]
  if not causal:
    return keys
  t = mask.shape[1]
  return keys & jnp.tril(jnp.ones((t, t), bool))[None, None]


class DecoderBlock(nn.Module):
  cfg: DecoderConfig
  sliding: bool = False        # Gemma 3: attention within the sliding window

  @nn.compact
  def __call__(self, x, mask4, positions, deterministic: bool):
    cfg = self.cfg
    std, dtype = cfg.initializer_range, cfg.dtype
    gemma = cfg.family == "gemma3"

    def norm(name):
      return RMSNorm(cfg.rms_norm_eps, offset=gemma, name=name)

    def proj(heads, name):
      return Linear((heads, cfg.head_dim), ("embed", "heads" if heads == cfg.num_heads
                                            else "kv_heads", "kv"),
                    init_std=std, dtype=dtype, name=name, use_bias=cfg.qkv_bias)

    h = norm("attention_norm")(x)
    q, k, v = (proj(cfg.num_heads, "query")(h), proj(cfg.num_kv_heads, "key")(h),
               proj(cfg.num_kv_heads, "value")(h))
    theta = cfg.rope_theta
    if gemma:
      q, k = norm("query_norm")(q), norm("key_norm")(k)
      if self.sliding:
        theta = cfg.rope_local_theta
        # A causal window looks back `sliding_window` - 1 positions; a bidirectional one
        # half of that each way (transformers' Gemma3TextConfig: window // 2 + 1,
        # exclusive, as EmbeddingGemma was trained).
        gap = positions[:, :, None] - positions[:, None, :]
        if cfg.attention == "bidirectional":
          near = jnp.abs(gap) < cfg.sliding_window // 2 + 1
        else:
          near = gap < cfg.sliding_window
        mask4 = mask4 & near[:, None]
    q, k = rope(q, positions, theta), rope(k, positions, theta)
    drop = 0.0 if deterministic else cfg.attention_dropout
    out = attention(q, k, v, mask4, dtype=dtype, dropout_rate=drop,  # GQA: fewer K/V heads
                    dropout_rng=self.make_rng("dropout") if drop > 0.0 else None)
    out = Linear((cfg.hidden_size,), ("heads", "kv", "embed"), in_dims=2, init_std=std,
                 dtype=dtype, name="output", use_bias=False)(out)
    if gemma:
      out = norm("post_attention_norm")(out)
    x = x + Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
    h = norm("mlp_norm")(x)
    gate = Linear((cfg.intermediate_size,), ("embed", "mlp"), init_std=std, dtype=dtype,
                  name="gate", use_bias=False)(h)
    up = Linear((cfg.intermediate_size,), ("embed", "mlp"), init_std=std, dtype=dtype,
                name="up", use_bias=False)(h)
    act = nn.gelu(gate, approximate=True) if gemma else nn.silu(gate)
    down = Linear((cfg.hidden_size,), ("mlp", "embed"), init_std=std, dtype=dtype,
                  name="down", use_bias=False)(act * up)
    if gemma:
      down = norm("post_mlp_norm")(down)
    x = x + Dropout(cfg.hidden_dropout)(down, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("activation_batch", "activation_length",
                                          "activation_embed"))


class _ScanBlock(nn.Module):
  """A block with the (carry, _) -> (carry, out) signature nn.scan wants."""
  cfg: DecoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask4, positions):
    block = nn.remat(DecoderBlock, static_argnums=(4,)) if self.cfg.remat else DecoderBlock
    y = block(self.cfg, name="block")(x, mask4, positions, self.deterministic)
    return y, y


class DecoderEncoder(nn.Module):
  """Returns a tuple of `num_layers + 1` hidden states, each [batch, length, hidden]
  (`depth`: only the first `depth` blocks, as in `BertEncoder`)."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, depth: int | None = None):
    del token_type_ids
    cfg = self.cfg
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=jnp.float32,
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.initializer_range), ("vocab", "embed")),
                     name="embed_tokens")
    x = embed(input_ids)
    if cfg.family == "gemma3":
      x = x * jnp.float32(np.sqrt(cfg.hidden_size))
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    mask4 = attention_mask_4d(attention_mask, cfg.attention == "causal")
    final_norm = RMSNorm(cfg.rms_norm_eps, offset=cfg.family == "gemma3", name="final_norm")
    if cfg.scan_layers:
      scan = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                           "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
      _, outs = scan(cfg, deterministic, name="layers")(x, mask4, positions)
      return (x,) + tuple(final_norm(outs[i])
                          for i in range(check_depth(depth, cfg.num_layers)))
    block = nn.remat(DecoderBlock, static_argnums=(4,)) if cfg.remat else DecoderBlock
    hidden = [x]
    for i in range(check_depth(depth, cfg.num_layers)):
      x = block(cfg, i in cfg.sliding_layers, name=f"layer_{i}")(x, mask4, positions,
                                                                deterministic)
      hidden.append(final_norm(x))
    return tuple(hidden)


def hf_weight_table(cfg: DecoderConfig) -> list[WeightEntry]:
  """HF Llama / Qwen2 / Mistral / Gemma 3 tensor names (a bare `*Model`: no 'model.' prefix)
  <-> Flax paths under `encoder` (unrolled layers). torch Linear weights are
  [out, in]; ours are [in, ...out] with the attention projections split per head."""
  h, nh, nkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  e = [WeightEntry("embed_tokens.weight", ("embed_tokens", "embedding"), same, same),
       WeightEntry("norm.weight", ("final_norm", "scale"), same, same)]
  for i in range(cfg.num_layers):
    hf, fx = f"layers.{i}.", f"layer_{i}"
    for ours, theirs, heads in (("query", "q_proj", nh), ("key", "k_proj", nkv),
                                ("value", "v_proj", nkv)):
      e.append(WeightEntry(f"{hf}self_attn.{theirs}.weight", (fx, ours, "kernel"),
                           *linear((h,), (heads, hd))))
      if cfg.qkv_bias:
        e.append(WeightEntry(f"{hf}self_attn.{theirs}.bias", (fx, ours, "bias"),
                             lambda b, heads=heads: b.reshape(heads, hd),
                             lambda b, heads=heads: b.reshape(heads * hd)))
    e.append(WeightEntry(f"{hf}self_attn.o_proj.weight", (fx, "output", "kernel"),
                         *linear((nh, hd), (h,))))
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
      e.append(WeightEntry(f"{hf}mlp.{theirs}.weight", (fx, ours, "kernel"),
                           np.transpose, np.transpose))
    norms = {"input_layernorm": "attention_norm", "post_attention_layernorm": "mlp_norm"}
    if cfg.family == "gemma3":    # norms after attention and MLP too, and on q and k
      norms = {"input_layernorm": "attention_norm",
               "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "mlp_norm",
               "post_feedforward_layernorm": "post_mlp_norm",
               "self_attn.q_norm": "query_norm", "self_attn.k_norm": "key_norm"}
    e += [WeightEntry(f"{hf}{theirs}.weight", (fx, ours, "scale"), same, same)
          for theirs, ours in norms.items()]
  return e


def _template_specials(tokenizer_json: dict) -> dict[str, str]:
  """{'bos_token', 'eos_token', 'unk_token'} as a tokenizer.json defines them: the
  special tokens its template puts before and after a single text, and its model's
  unknown token; those it does not have are left out."""
  out = {}
  unk = (tokenizer_json.get("model") or {}).get("unk_token")
  if isinstance(unk, str):
    out["unk_token"] = unk
  post = tokenizer_json.get("post_processor") or {}
  steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
  for step in steps:
    single = step.get("single") if isinstance(step, dict) else None
    if not isinstance(single, list):
      continue
    seen_text = False
    for piece in single:
      if not isinstance(piece, dict):
        continue
      if "Sequence" in piece:
        seen_text = True
      elif isinstance(piece.get("SpecialToken"), dict):
        token = piece["SpecialToken"].get("id")
        if isinstance(token, str):
          out.setdefault("eos_token" if seen_text else "bos_token", token)
  return out
