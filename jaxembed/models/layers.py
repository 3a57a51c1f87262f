"""The layers every encoder here is built from (BERT, the decoder, ViT, the poolers and
heads): `Linear` with logical axis names and mixed-precision matmuls, dropout from
hashed keep masks, softmax attention (grouped-query, masked, with dropout) and
LayerNorm. Each fast path is explained where it is defined (benchmarks/README.md has
the measurements)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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
              dropout_rng=None, bias=None):
  """Softmax attention, q [B, Tq, H, D], k/v [B, Tk, Hkv, D] (H a multiple of Hkv:
  grouped-query attention), `key_mask` broadcastable to [B, H, Tq, Tk] (True = attend).

  Written as head-major batched matmuls (XLA's CPU batched dot is faster on
  [B, H, T, D] than on the einsum's interleaved layout: benchmarks/README.md,
  "Measurements behind design choices"), the 1/sqrt(D) scale folded
  into q, the softmax in float32 and the two matmuls in `dtype` with float32
  accumulation. `dropout_rate` > 0 with a `dropout_rng` drops attention probabilities (the
  fused `jax.nn.dot_product_attention` cannot), with `keep_mask`.
  A row whose keys are all masked attends uniformly (finite, like the fused call).
  `bias` (broadcastable to [B, H, Tq, Tk]) is added to the scaled logits (MPNet's
  relative-position bias).
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
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
  # The softmax's division is deferred past the second matmul: exp(s - max) @ v, then
  # divided by the row sums: [B, H, Tq, D] divisions instead of [B, H, Tq, Tk], one
  # pass less over the scores (benchmarks/README.md). Dropout scales elements, so it
  # commutes with the division.
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


def layer_norm(eps: float, name: str, dtype: str | None = "float32"):
  """LayerNorm with logical axis names on its scale and bias (every encoder and
  pooler uses this one); dtype None computes in the input's dtype."""
  return nn.LayerNorm(
      epsilon=eps,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      dtype=None if dtype is None else jnp.dtype(dtype),
      name=name)
