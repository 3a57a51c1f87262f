"""BEBR's recurrent binariser (Gan et al. 2023, "Binary Embedding-based Retrieval at
Tencent"): a float embedding compressed into `steps` binary vectors of `code_dim` bits
each (`steps` bits per code dimension), by binarising, subtracting what was binarised,
and binarising the residual again.

Our reading of the abstract and of the method's summary (the paper's equations were
not available offline):

    z      = P x                        a linear map to the code space (identity at
                                        init when code_dim == dim)
    r_0    = z
    c_t    = sign(f_t(r_{t-1}))         f_t a residual MLP block (identity at init)
    r_t    = r_{t-1} - w_t c_t          w_t > 0, one learned scale per step
    v      = sum_t w_t c_t              the binary embedding's value

At initialisation this is plain residual binarisation, and with one step it is sign
binarisation of x itself. Both sides of a search are binarised, and
<v_q, v_d> = sum_{s,t} w_s w_t <c_s^q, c_t^d> needs only popcounts of XORed bit rows
(`jaxembed.evals.quantize.sdc_scores`: BEBR's symmetric distance computation).

`sign` has no useful gradient; training uses the straight-through estimator with
hardtanh's gradient (`sign_ste`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def sign_ste(x):
  """Forward: +1 where x >= 0, else -1. Backward: the gradient of clip(x, -1, 1)."""
  clipped = jnp.clip(x, -1.0, 1.0)
  return clipped + jax.lax.stop_gradient(jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
                                         - clipped)


def initial_weights(dim: int, steps: int) -> np.ndarray:
  """w_t at init: the mean |coordinate| of a random unit vector in `dim` dimensions
  (sqrt(2 / pi) / sqrt(dim)), halved at each step (the residual's scale roughly halves)."""
  return (np.sqrt(2.0 / np.pi / dim) * 0.5 ** np.arange(steps)).astype(np.float32)


class ResidualBlock(nn.Module):
  """x + W2 gelu(W1 LayerNorm(x)); W2 starts at zero, so the block starts as identity."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.hidden, name="up")(nn.LayerNorm(name="norm")(x))
    return x + nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros,
                        name="down")(nn.gelu(h))


def _identity_or_orthogonal(key, shape, dtype=jnp.float32):
  if shape[0] == shape[1]:
    return jnp.eye(shape[0], dtype=dtype)
  return nn.initializers.orthogonal()(key, shape, dtype)


class RecurrentBinarizer(nn.Module):
  """x [n, dim] -> (codes [n, steps, code_dim] of +-1, weights [steps] > 0, the last
  residual [n, code_dim], z [n, code_dim])."""
  code_dim: int
  steps: int
  hidden_mult: int = 2

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    log_w = self.param("log_weights",
                       lambda _: jnp.log(jnp.asarray(initial_weights(dim, self.steps))))
    weights = jnp.exp(log_w)
    z = nn.Dense(self.code_dim, use_bias=False, kernel_init=_identity_or_orthogonal,
                 name="project")(x)
    residual, codes = z, []
    for t in range(self.steps):
      c = sign_ste(ResidualBlock(self.hidden_mult * self.code_dim, name=f"step{t}")(residual))
      residual = residual - weights[t] * c
      codes.append(c)
    return jnp.stack(codes, axis=1), weights, residual, z


def composite(codes, weights):
  """v = sum_t w_t c_t: [n, steps, code_dim], [steps] -> [n, code_dim]."""
  return jnp.einsum("ntm,t->nm", codes, weights)
