"""Hugging Face tensors <-> Flax parameter trees, through per-model two-way tables.

Each model module (`bert.py`, `decoder.py`) defines `hf_weight_table(cfg)`: a list of
`WeightEntry(hf name, Flax path under 'encoder', to_flax, to_hf)`. This module applies
a table in either direction, checking every tensor the model needs by name and shape
(errors name the tensor and both shapes), and converts between the unrolled layer
layout of the tables and the `nn.scan` layout.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import ModelLoadError


@dataclasses.dataclass(frozen=True)
class WeightEntry:
  hf: str                                     # tensor name in the HF checkpoint
  flax: tuple[str, ...]                       # path under params['encoder']
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def param_path(key_path) -> str:
  """A jax key path -> 'encoder/layer_5/attention/query/kernel'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in key_path)


def same(x):
  return x


def linear(shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> tuple[Callable, Callable]:
  """torch Linear [out, in] <-> a Flax kernel [in..., out...] (both flattened to 2D
  as [prod(in), prod(out)])."""
  n_in, n_out = int(np.prod(shape_in)), int(np.prod(shape_out))
  return (lambda w: w.T.reshape(*shape_in, *shape_out),
          lambda k: k.reshape(n_in, n_out).T)


def expected_shapes(encoder: flax.linen.Module, *inputs) -> dict[tuple[str, ...], tuple]:
  """Flat {path: shape} of an encoder's parameters (no memory is allocated)."""
  shapes = jax.eval_shape(
      lambda: flax.linen.unbox(encoder.init(jax.random.PRNGKey(0), *inputs)))
  return {k: v.shape for k, v in flax.traverse_util.flatten_dict(shapes["params"]).items()}


def text_encoder_shapes(encoder: flax.linen.Module):
  ids = jnp.zeros((1, 4), jnp.int32)
  return expected_shapes(encoder, ids, ids)


def to_flax(tensors, table: list[WeightEntry], shapes: dict[tuple[str, ...], tuple],
            source: str, describe: str = "", place=None) -> dict:
  """HF tensors (a dict, or a Mapping that reads each on access) -> {'encoder': {...}}
  by `table`, checking names and shapes. `place(path, value)`, when given, receives
  each converted leaf as soon as it is made and returns what the tree keeps (e.g. the
  leaf put onto its devices), so that no more than one tensor sits on the host."""
  missing = [e.hf for e in table if e.hf not in tensors]
  if missing:
    raise ModelLoadError(f"{source}: {len(missing)} tensors the model needs are missing, "
                         f"e.g. {missing[:5]}")
  tree: dict = {}
  for entry in table:
    got = tensors[entry.hf]
    value = np.asarray(entry.to_flax(np.asarray(got, np.float32)))
    want = shapes[entry.flax]
    if value.shape != tuple(want):
      raise ModelLoadError(
          f"{source}: tensor {entry.hf!r} has shape {tuple(got.shape)}, which does not fit "
          f"encoder/{'/'.join(entry.flax)} of shape {tuple(want)}"
          + (f" (config: {describe})" if describe else ""))
    if place is not None:
      value = place(entry.flax, value)
    node = tree
    for key in entry.flax[:-1]:
      node = node.setdefault(key, {})
    node[entry.flax[-1]] = value
    del got
  return {"encoder": tree}


def to_hf(params: dict, table: list[WeightEntry]) -> dict[str, np.ndarray]:
  """{'encoder': ...} (unrolled layout) -> HF tensors by `table`."""
  out = {}
  for entry in table:
    node = params["encoder"]
    for key in entry.flax:
      node = node[key]
    out[entry.hf] = np.ascontiguousarray(entry.to_hf(np.asarray(node, np.float32)))
  return out


def unscan_layout(params: dict, num_layers: int) -> dict:
  """The nn.scan layout {'layers': {'block': stacked}} -> unrolled {'layer_i': ...}
  (a no-op for unrolled parameters)."""
  enc = dict(params["encoder"])
  if "layers" not in enc:
    return params
  stacked = enc.pop("layers")["block"]
  for i in range(num_layers):
    enc[f"layer_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked)
  return dict(params, encoder=enc)


def scan_layout(params: dict, num_layers: int) -> dict:
  """Unrolled {'layer_0': ..., 'layer_1': ...} -> the nn.scan layout
  {'layers': {'block': stacked}} (leading axis = layer)."""
  enc = dict(params["encoder"])
  layers = [enc.pop(f"layer_{i}") for i in range(num_layers)]
  enc["layers"] = {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
  return dict(params, encoder=enc)


def truncate_layers(params: dict, num_layers: int) -> dict:
  """The first `num_layers` blocks of an unrolled {'encoder': ...} tree."""
  return {"encoder": {k: v for k, v in params["encoder"].items()
                      if not k.startswith("layer_") or int(k.split("_")[1]) < num_layers}}
