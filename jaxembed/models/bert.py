"""A BERT encoder in Flax Linen that returns every layer's hidden states.

The layout follows Hugging Face's `BertModel` (post-LayerNorm blocks, exact-erf GELU,
absolute position embeddings) so that its safetensors load by renaming alone
(`jaxembed.models.loading`). Every parameter carries logical axis names, so the same
module shards under any mesh through the rules in `jaxembed.sharding`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.models.weights import WeightEntry, same


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


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

  def __post_init__(self):
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
    if hf.get("model_type", "bert") != "bert":
      raise ConfigError(
          f"model: config.json has model_type={hf.get('model_type')!r}; only 'bert' "
          "checkpoints load into this encoder")
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
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The inverse of `from_hf`: a `config.json` dict that `transformers` reads."""
    return {
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
        "pad_token_id": 0,
    }


class Linear(nn.Module):
  """x @ kernel + bias over the last `in_dims` axes, to an output of shape `features`.

  Written out rather than nn.DenseGeneral because DenseGeneral initialises a flat 2D
  kernel and reshapes it, which breaks logical names on a (embed, heads, kv) kernel.
  `axes` names the kernel's axes: the contracted input axes, then the output axes.

  `dtype` is the matmul's input type (mixed precision): input and kernel are cast to
  it and the product is accumulated and returned in float32, so with 'bfloat16' the
  parameters, the residual stream, norms and softmax stay float32 and only the
  matmuls run in bfloat16 (on CPUs with AMX / AVX512-BF16 about 2.5x the float32 rate).
  """
  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  in_dims: int = 1
  init_std: float = 0.02
  dtype: str = "float32"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    shape = tuple(x.shape[-self.in_dims:]) + tuple(self.features)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                               self.axes), shape)
    y = matmul(x, kernel, self.in_dims, self.dtype)
    if not self.use_bias:
      return y
    bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             self.axes[self.in_dims:]), self.features)
    return y + bias.astype(y.dtype)


def matmul(x, kernel, in_dims: int, dtype: str):
  """tensordot over the last `in_dims` axes of x and the first of kernel, with both
  cast to `dtype` and the result in float32 (for float32 inputs and dtype)."""
  dt = jnp.dtype(dtype)
  if dt == jnp.float32:
    return jnp.tensordot(x, kernel.astype(x.dtype), axes=in_dims)
  return _mixed_matmul(x, kernel, in_dims, dt)


def _dot(a, b, a_axes, b_axes):
  """dot_general contracting a_axes of a with b_axes of b, float32 accumulation."""
  return jax.lax.dot_general(a, b, ((tuple(a_axes), tuple(b_axes)), ((), ())),
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_matmul(x, kernel, in_dims: int, dt):
  n = x.ndim
  return _dot(x.astype(dt), kernel.astype(dt), range(n - in_dims, n), range(in_dims))


def _mixed_matmul_fwd(x, kernel, in_dims, dt):
  x16, k16 = x.astype(dt), kernel.astype(dt)
  n = x.ndim
  # (Zero-size arrays carry the primal dtypes: residuals must be arrays.)
  like = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))
  return _dot(x16, k16, range(n - in_dims, n), range(in_dims)), (x16, k16, *like)


def _mixed_matmul_bwd(in_dims, dt, res, g):
  """Both gradient matmuls in `dt` with float32 accumulation too (the default
  transpose would multiply the float32 cotangent in float32: half the speed-up)."""
  x16, k16, x_like, k_like = res
  g16 = g.astype(dt)
  batch = x16.ndim - in_dims                     # leading axes of x (and of g)
  out = k16.ndim - in_dims                       # trailing axes of kernel (and of g)
  dx = _dot(g16, k16, range(batch, batch + out), range(in_dims, in_dims + out))
  dk = _dot(x16, g16, range(batch), range(batch))
  return dx.astype(x_like.dtype), dk.astype(k_like.dtype)


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _fmix32(x):
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  x ^= x >> 16
  x *= jnp.uint32(0x85EBCA6B)
  x ^= x >> 13
  x *= jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def keep_mask(key, shape, rate: float):
  """Dropout's keep mask (True with probability 1 - rate) for a threefry `key`.

  The bits are a counter-based hash of each element's index under two 32-bit words
  drawn from `key` (two rounds of MurmurHash3's finaliser), not threefry itself:
  threefry's bits were a quarter of the MiniLM train step on CPU, the hash costs a
  tenth of that and fuses into its consumer (benchmarks/README.md). Like threefry's,
  the mask is a function of the key and the global index only, so it is the same
  under any sharding, and a resumed run draws the masks of an uninterrupted one.
  """
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  size = int(np.prod(shape))
  if size >= 2 ** 32:
    raise ValueError(f"dropout over {size} elements: at most 2**32 per call")
  count = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits = _fmix32(_fmix32(count * jnp.uint32(0x9E3779B9) + seeds[0]) ^ seeds[1])
  return bits >= jnp.uint32(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1))


def dropout(x, rate: float, key):
  """Inverted dropout of `x` with `keep_mask`."""
  if rate <= 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  return jnp.where(keep_mask(key, x.shape, rate), x / (1.0 - rate), 0.0).astype(x.dtype)


class Dropout(nn.Module):
  """nn.Dropout's interface (rate; deterministic at call), with `keep_mask`'s bits
  from the 'dropout' rng stream."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate <= 0.0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))


def attention(q, k, v, key_mask, *, dtype: str = "float32", dropout_rate: float = 0.0,
              dropout_rng=None):
  """Softmax attention, q [B, Tq, H, D], k/v [B, Tk, Hkv, D] (H a multiple of Hkv:
  grouped-query attention), `key_mask` broadcastable to [B, H, Tq, Tk] (True = attend).

  Written as head-major batched matmuls (XLA's CPU batched dot is 3x faster on
  [B, H, T, D] than on the einsum's interleaved layout), the 1/sqrt(D) scale folded
  into q, the softmax in float32 and the two matmuls in `dtype` with float32
  accumulation. `dropout_rate` > 0 with a `dropout_rng` drops attention probabilities (the
  fused `jax.nn.dot_product_attention` cannot), with `keep_mask`.
  A row whose keys are all masked attends uniformly (finite, like the fused call).
  """
  b, tq, h, d = q.shape
  hkv = k.shape[2]
  dt = jnp.dtype(dtype)
  acc = dict(preferred_element_type=jnp.float32) if dt != jnp.float32 else {}
  q = (q * jnp.asarray(1.0 / np.sqrt(d), q.dtype)).transpose(0, 2, 1, 3)     # B H Tq D
  k = k.transpose(0, 2, 3, 1)                                                # B Hkv D Tk
  v = v.transpose(0, 2, 1, 3)                                                # B Hkv Tk D
  if hkv != h:  # grouped-query: [B, Hkv, G*Tq, D] against each K/V head
    q = q.reshape(b, hkv, (h // hkv) * tq, d)
  logits = jnp.matmul(q.astype(dt), k.astype(dt), **acc).astype(jnp.float32)
  if hkv != h:
    logits = logits.reshape(b, h, tq, -1)
  logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
  # The softmax's division is deferred past the second matmul: exp(s - max) @ v, then
  # divided by the row sums: [B, H, Tq, D] divisions instead of [B, H, Tq, Tk], one
  # pass less over the scores (the attention alone 2.6x faster on a 2-core CPU at
  # B 128, T 112). Dropout scales elements, so it commutes with the division.
  probs = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  denom = probs.sum(axis=-1, keepdims=True)
  if dropout_rate > 0.0 and dropout_rng is not None:
    probs = dropout(probs, dropout_rate, dropout_rng)
  if hkv != h:
    probs = probs.reshape(b, hkv, (h // hkv) * tq, -1)
  out = jnp.matmul(probs.astype(dt), v.astype(dt), **acc)
  if hkv != h:
    out = out.reshape(b, h, tq, d)
  out = out.astype(jnp.float32) / denom
  return out.astype(jnp.result_type(v.dtype, jnp.float32)).transpose(0, 2, 1, 3)


def _dense(features, axes, cfg: BertConfig, name: str, in_dims: int = 1):
  features = features if isinstance(features, tuple) else (features,)
  return Linear(features, axes, in_dims=in_dims, init_std=cfg.initializer_range,
                dtype=cfg.dtype, name=name)


def layer_norm(eps: float, name: str, dtype: str | None = "float32"):
  """LayerNorm with logical axis names on its scale and bias (every encoder and
  pooler uses this one); dtype None computes in the input's dtype."""
  return nn.LayerNorm(
      epsilon=eps,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      dtype=None if dtype is None else jnp.dtype(dtype),
      name=name)


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
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    shape = (cfg.num_heads, cfg.head_dim)
    q = _dense(shape, ("embed", "heads", "kv"), cfg, "query")(x)
    k = _dense(shape, ("embed", "heads", "kv"), cfg, "key")(x)
    v = _dense(shape, ("embed", "heads", "kv"), cfg, "value")(x)
    # mask: [batch, keys] -> [batch, 1 (heads), 1 (queries), keys]
    key_mask = mask[:, None, None, :].astype(bool)
    drop = 0.0 if deterministic else cfg.attention_dropout
    if _use_cudnn(getattr(cfg, "attention", "auto"), cfg.dtype, drop):
      dt = jnp.dtype(cfg.dtype)
      out = jax.nn.dot_product_attention(q.astype(dt), k.astype(dt), v.astype(dt),
                                         mask=key_mask, implementation="cudnn")
      out = out.astype(jnp.float32)
    else:
      out = attention(q, k, v, key_mask, dtype=cfg.dtype, dropout_rate=drop,
                      dropout_rng=self.make_rng("dropout") if drop > 0.0 else None)
    return _dense(cfg.hidden_size, ("heads", "kv", "embed"), cfg, "output",
                  in_dims=2)(out)


class BertLayer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    h = SelfAttention(cfg, name="attention")(x, mask, deterministic)
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
               deterministic: bool = True, depth: int | None = None):
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
    typ = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=dtype,
                   embedding_init=nn.with_logical_partitioning(init, (None, "embed")),
                   name="token_type_embeddings")
    x = word(input_ids) + pos(jnp.arange(length)[None, :]) + typ(token_type_ids)
    x = _layer_norm(cfg, "embeddings_norm")(x)
    x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    if cfg.scan_layers:
      scan = nn.scan(_ScanLayer, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=nn.broadcast, length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
      _, outs = scan(cfg, deterministic, name="layers")(x, attention_mask)
      return (x,) + tuple(outs[i] for i in range(check_depth(depth, cfg.num_layers)))
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if cfg.remat else BertLayer
    hidden = [x]
    for i in range(check_depth(depth, cfg.num_layers)):
      x = layer_cls(cfg, name=f"layer_{i}")(x, attention_mask, deterministic)
      hidden.append(x)
    return tuple(hidden)


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
  def __call__(self, x, mask):
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.cfg.remat else BertLayer
    y = layer_cls(self.cfg, name="block")(x, mask, self.deterministic)
    return y, y


def hf_weight_table(cfg: BertConfig) -> list[WeightEntry]:
  """HF tensor name -> Flax path under `encoder`, with the reshape each way.

  torch Linear stores [out, in]; Flax kernels are [in, out], with the attention
  projections split into (heads, head_dim).
  """
  h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  e = [
      WeightEntry("embeddings.word_embeddings.weight", ("word_embeddings", "embedding"), same, same),
      WeightEntry("embeddings.position_embeddings.weight", ("position_embeddings", "embedding"), same, same),
      WeightEntry("embeddings.token_type_embeddings.weight", ("token_type_embeddings", "embedding"), same, same),
      WeightEntry("embeddings.LayerNorm.weight", ("embeddings_norm", "scale"), same, same),
      WeightEntry("embeddings.LayerNorm.bias", ("embeddings_norm", "bias"), same, same),
  ]
  for i in range(cfg.num_layers):
    hf, fx = f"encoder.layer.{i}.", f"layer_{i}"
    for proj in ("query", "key", "value"):
      e.append(WeightEntry(f"{hf}attention.self.{proj}.weight", (fx, "attention", proj, "kernel"),
                      lambda w: w.T.reshape(h, n, d), lambda k: k.reshape(h, h).T))
      e.append(WeightEntry(f"{hf}attention.self.{proj}.bias", (fx, "attention", proj, "bias"),
                      lambda b: b.reshape(n, d), lambda b: b.reshape(h)))
    e += [
        WeightEntry(f"{hf}attention.output.dense.weight", (fx, "attention", "output", "kernel"),
               lambda w: w.T.reshape(n, d, h), lambda k: k.reshape(h, h).T),
        WeightEntry(f"{hf}attention.output.dense.bias", (fx, "attention", "output", "bias"), same, same),
        WeightEntry(f"{hf}attention.output.LayerNorm.weight", (fx, "attention_norm", "scale"), same, same),
        WeightEntry(f"{hf}attention.output.LayerNorm.bias", (fx, "attention_norm", "bias"), same, same),
        WeightEntry(f"{hf}intermediate.dense.weight", (fx, "intermediate", "kernel"), np.transpose, np.transpose),
        WeightEntry(f"{hf}intermediate.dense.bias", (fx, "intermediate", "bias"), same, same),
        WeightEntry(f"{hf}output.dense.weight", (fx, "output", "kernel"), np.transpose, np.transpose),
        WeightEntry(f"{hf}output.dense.bias", (fx, "output", "bias"), same, same),
        WeightEntry(f"{hf}output.LayerNorm.weight", (fx, "output_norm", "scale"), same, same),
        WeightEntry(f"{hf}output.LayerNorm.bias", (fx, "output_norm", "bias"), same, same),
    ]
  return e
