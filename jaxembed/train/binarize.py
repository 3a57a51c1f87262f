"""Fitting BEBR's recurrent binariser (`jaxembed.models.binarizer`) embedding to
embedding: from float embeddings alone, no labels and no encoder, so one fit serves
every task the embeddings serve (the paper's "task-agnostic" training).

The objective, our reading: for a batch of unit embeddings X and their binary values
V (both sides binarised, as search scores them),

    loss = KL( softmax(s X X^T) || softmax(s V V^T) )   per row, the diagonal left out
         + recon_weight * mean ||r_T||^2 / ||z||^2

the first keeps each embedding's neighbourhood among the batch (the ranking search
needs), the second keeps the residual after the last step small (the code spends its
bits on the embedding). `fit_binarizer` returns a `Binarizer`: `.codes(x)` packed bits
[n, steps, ceil(code_dim / 8)] uint8 and `.weights`, what `quantize.sdc_scores` reads.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.models.binarizer import RecurrentBinarizer, composite
from jaxembed.train.small_fit import fit_on_batches


@dataclasses.dataclass
class Binarizer:
  """A fitted recurrent binariser: `codes(x)` -> packed bits, `weights` [steps]."""
  module: RecurrentBinarizer
  params: dict
  history: list = dataclasses.field(default_factory=list)   # (iteration, loss)

  @property
  def steps(self) -> int:
    return self.module.steps

  @property
  def code_dim(self) -> int:
    return self.module.code_dim

  @property
  def bits(self) -> int:
    return self.steps * self.code_dim

  @property
  def weights(self) -> np.ndarray:
    return np.exp(np.asarray(self.params["log_weights"], np.float64))

  def signs(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """[n, steps, code_dim] bool: the code bits (True for +1)."""
    apply = jax.jit(lambda p, v: self.module.apply({"params": p}, v)[0] > 0)
    x = _unit(x)
    return np.concatenate([np.asarray(apply(self.params, x[s:s + batch_size]))
                           for s in range(0, len(x), batch_size)])

  def codes(self, x: np.ndarray) -> np.ndarray:
    """[n, steps, ceil(code_dim / 8)] uint8: each step's bits packed 8 per byte."""
    return np.packbits(self.signs(x), axis=-1)

  def values(self, x: np.ndarray) -> np.ndarray:
    """[n, code_dim] float64: sum_t w_t c_t, the binary embedding's value."""
    c = np.where(self.signs(x), 1.0, -1.0)
    return np.einsum("ntm,t->nm", c, self.weights)


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def relational_kl(x, v, scale: float):
  """Mean over rows of KL(softmax(s x x^T) || softmax(s v v^T)), diagonals excluded."""
  n = x.shape[0]
  off = ~jnp.eye(n, dtype=bool)
  t = jnp.where(off, scale * x @ x.T, -jnp.inf)
  s = jnp.where(off, scale * v @ v.T, -jnp.inf)
  p = jax.nn.softmax(t, axis=-1)
  log_p = jax.nn.log_softmax(t, axis=-1)
  log_q = jax.nn.log_softmax(s, axis=-1)
  return jnp.mean(jnp.sum(jnp.where(off, p * (log_p - log_q), 0.0), axis=-1))


def binarizer_loss(module, params, x, *, scale: float, recon_weight: float):
  codes, weights, residual, z = module.apply({"params": params}, x)
  v = composite(codes, weights)
  recon = jnp.mean(jnp.sum(residual ** 2, -1) / jnp.maximum(jnp.sum(z ** 2, -1), 1e-12))
  return relational_kl(x, v, scale) + recon_weight * recon


def fit_binarizer(embeddings: np.ndarray, *, steps: int, code_dim: int | None = None,
                  iterations: int = 2000, batch_size: int = 512,
                  learning_rate: float = 1e-3, scale: float = 20.0,
                  recon_weight: float = 1.0, seed: int = 0) -> Binarizer:
  """Fits a binariser of `steps` x `code_dim` bits (code_dim: the embeddings' width by
  default) on `embeddings` [n, dim] (normalised here). Adam with a cosine decay; each
  iteration a random batch (seeded). The loss is logged every 250 iterations and kept
  in `.history`."""
  x = _unit(embeddings)
  n, dim = x.shape
  code_dim = dim if code_dim is None else code_dim
  for name, value in (("steps", steps), ("code_dim", code_dim), ("iterations", iterations),
                      ("batch_size", batch_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ConfigError(f"fit_binarizer: {name}={value!r} must be an integer >= 1")
  if n < 2:
    raise ConfigError(f"fit_binarizer: {n} embeddings; at least 2 are needed")
  batch_size = min(batch_size, n)
  module = RecurrentBinarizer(code_dim=code_dim, steps=steps)
  key, init_key = jax.random.split(jax.random.PRNGKey(seed))
  params = module.init(init_key, x[:2])["params"]
  loss_fn = lambda p, b: binarizer_loss(module, p, b, scale=scale, recon_weight=recon_weight)
  params, history = fit_on_batches(loss_fn, params, (x,), iterations=iterations,
                                   batch_size=batch_size, learning_rate=learning_rate,
                                   key=key, label=f"binarizer {steps} x {code_dim} bits")
  return Binarizer(module, jax.device_get(params), history)
