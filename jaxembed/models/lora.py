"""LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") on
chosen projection kernels, at the parameter level.

A target kernel W (any rank; its axes split into inputs and outputs where the two
products are closest, e.g. a query kernel [hidden, heads, head_dim] as [hidden,
heads*head_dim], an attention output [heads, head_dim, hidden] as [heads*head_dim,
hidden]) gets factors a [n_in, r] and b [r, n_out] under params['lora'], and the
model runs with W + (alpha / r) · (a @ b) reshaped to W's shape. b starts at zero, so
training starts from the pretrained model; a is uniform in ±1/sqrt(n_in) (PEFT's
Kaiming-uniform). The base weights are frozen (`optim.trainable`'s machinery: no
gradient, no update, no optimizer state), only the factors (and whatever
`optim.trainable` names, e.g. a pooler) train. Merging is exact at every step, so
the merged weights are what evaluation and export see (`merge`).

Dropout on the low-rank path (optim.lora.dropout, PEFT's lora_dropout) needs the
factors applied to the activations: y = x W + (alpha / r) · (dropout(x) @ a) @ b. In
training with a rate > 0 the step runs the model on the base weights under
`unmerged`, which adds that term to the output of every adapted `Linear` (a Flax
method interceptor, so no encoder knows about LoRA); at rate 0, and in evaluation
and export, the merged weights give the same function.
"""

from __future__ import annotations

import contextlib
import math
import re
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ConfigError
from jaxembed.models.weights import param_path

GROUP = "lora"


def split_axis(shape) -> int:
  """Where a kernel's axes split into (inputs, outputs): the k in 1..ndim-1 whose
  prod(shape[:k]) and prod(shape[k:]) are closest (the first such k on a tie)."""
  shape = tuple(int(s) for s in shape)
  return min(range(1, len(shape)),
             key=lambda k: abs(math.log(math.prod(shape[:k]) / math.prod(shape[k:]))))


def _key(path: str) -> str:
  return path.replace("/", ".")


def targets(shapes, patterns) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the kernels (ndim >= 2, outside 'loss') matching one of
  `patterns` (re.search over paths like 'encoder/layer_0/attention/query/kernel')."""
  if not patterns:
    raise ConfigError("optim.lora.targets is empty: name the projections to adapt, e.g. "
                      "('attention/(query|value)/kernel',) for BERT or "
                      "('layer_\\d+/(query|value)/kernel',) for a decoder")
  flat = [(param_path(kp), tuple(x.shape)) for kp, x in jax.tree_util.tree_flatten_with_path(shapes)[0]]
  flat = [(p, s) for p, s in flat if not p.startswith(("loss/", GROUP + "/"))]
  out = {}
  for pattern in patterns:
    try:
      rx = re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"optim.lora.targets: {pattern!r} is not a regular expression ({e})")
    hits = [(p, s) for p, s in flat if rx.search(p)]
    kernels = [(p, s) for p, s in hits if len(s) >= 2]
    if not kernels:
      shown = [p for p, _ in hits[:3]] or [p for p, s in flat if len(s) >= 2][:8]
      raise ConfigError(f"optim.lora.targets: {pattern!r} matches no kernel (a parameter "
                        f"of two or more axes); {'it matches' if hits else 'paths look like'} "
                        f"{shown}")
    out.update(kernels)
  return out


def shapes(model_shapes, cfg) -> dict:
  """The 'lora' group's ShapeDtypeStructs for `cfg` (optim.lora: rank, targets)."""
  rank = int(cfg.rank)
  out = {}
  for path, shape in targets(model_shapes, tuple(cfg.targets)).items():
    k = split_axis(shape)
    n_in, n_out = math.prod(shape[:k]), math.prod(shape[k:])
    if rank > min(n_in, n_out):
      raise ConfigError(f"optim.lora.rank={rank} exceeds {path}'s {n_in} x {n_out}")
    out[_key(path)] = {"a": jax.ShapeDtypeStruct((n_in, rank), jnp.float32),
                       "b": jax.ShapeDtypeStruct((rank, n_out), jnp.float32)}
  return out


def init(group_shapes, seed: int) -> dict:
  """Host values of the factors: a ~ U(±1/sqrt(n_in)), b = 0."""
  rng = np.random.default_rng(seed)
  out = {}
  for key in sorted(group_shapes):
    a, b = group_shapes[key]["a"], group_shapes[key]["b"]
    bound = 1.0 / math.sqrt(a.shape[0])
    out[key] = {"a": rng.uniform(-bound, bound, a.shape).astype(np.float32),
                "b": np.zeros(b.shape, np.float32)}
  return out


def check(cfg) -> None:
  if int(cfg.rank) < 0:
    raise ConfigError(f"optim.lora.rank={cfg.rank} must be >= 0 (0: no LoRA)")
  if int(cfg.rank) and not float(cfg.alpha) > 0:
    raise ConfigError(f"optim.lora.alpha={cfg.alpha} must be > 0")
  if not 0.0 <= float(cfg.get("dropout", 0.0)) < 1.0:
    raise ConfigError(f"optim.lora.dropout={cfg.dropout} must be in [0, 1)")


def dropout_keep(rng, key: str, shape, rate: float):
  """The keep mask (bool, `shape`) of the adapted kernel `key`'s input: Bernoulli(1 -
  rate) under the step's key folded with the kernel's name, so each kernel draws its
  own mask and a resumed run draws the same ones."""
  return jax.random.bernoulli(jax.random.fold_in(rng, zlib.crc32(key.encode())),
                              1.0 - rate, shape)


@contextlib.contextmanager
def unmerged(factors: dict, scale: float, rate: float, rng):
  """Within this context, `model.apply` on the base weights adds scale · (dropout(x)
  @ a @ b) to the output of every `Linear` whose kernel has factors (x: the Linear's
  input, its `in_dims` input axes flattened; inverted dropout at `rate`)."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not hasattr(module, "in_dims"):
      return next_fun(*args, **kwargs)
    key = _key("/".join(module.path)) + ".kernel"
    if key not in factors:
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    x, a, b = args[0], factors[key]["a"], factors[key]["b"]
    lead = x.shape[:x.ndim - module.in_dims]
    if math.prod(x.shape[len(lead):]) != a.shape[0]:
      raise ConfigError(f"optim.lora.dropout: {key}'s factors split its kernel after "
                        f"{a.shape[0]} inputs, not at its {module.in_dims} input axes "
                        f"{x.shape[len(lead):]}; use optim.lora.dropout=0 for it")
    h = x.reshape(lead + (a.shape[0],)).astype(jnp.float32)
    if rate > 0:
      h = jnp.where(dropout_keep(rng, key, h.shape, rate), h / (1.0 - rate), 0.0)
    delta = scale * ((h @ a) @ b)
    return y + delta.reshape(y.shape).astype(y.dtype)

  with nn.intercept_methods(interceptor):
    yield


def scale(cfg) -> float:
  return float(cfg.alpha) / int(cfg.rank)


def merge(params: dict, scale: float) -> dict:
  """`params` without the 'lora' group, each target kernel replaced by W + scale ·
  (a @ b) (W's dtype); a no-op without the group."""
  if GROUP not in params:
    return params
  factors = params[GROUP]
  out = {k: v for k, v in params.items() if k != GROUP}

  def set_in(tree, keys, fn):
    if len(keys) == 1:
      return dict(tree, **{keys[0]: fn(tree[keys[0]])})
    return dict(tree, **{keys[0]: set_in(tree[keys[0]], keys[1:], fn)})

  for key, ab in factors.items():
    delta = scale * (ab["a"] @ ab["b"])
    out = set_in(out, key.split("."),
                 lambda w, d=delta: w + d.reshape(w.shape).astype(w.dtype))
  return out
