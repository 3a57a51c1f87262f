"""Batched forward passes: texts -> pooled vectors of every layer (`BatchEncoder`) or
each text's token vectors (`TokenEncoder`), through any model of the embedder
interface (`models/embedder.py`), on one device or sharded over a mesh. The public
model (`api.EmbeddingModel`) and training's evaluation both encode through these.
"""

from __future__ import annotations

import functools
import sys
from typing import Sequence

import jax
import numpy as np
import tqdm

from jaxembed import sharding as shd
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ConfigError


def _count(value, name: str, *, low: int, high: int | None = None) -> int:
  """An integer argument in [low, high]; a float with a fraction, a bool or a string
  is refused rather than cut (dim=8.7 is not dim 8)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
    raise TypeError(f"{name}={value!r} must be an integer")
  if isinstance(value, (float, np.floating)) and not float(value).is_integer():
    raise ConfigError(f"{name}={value!r} must be a whole number")
  value = int(value)
  if value < low or (high is not None and value > high):
    raise ConfigError(f"{name}={value} is out of range; valid: {low}.."
                      f"{high if high is not None else ''}")
  return value


def _texts(texts, what: str = "encode") -> list[str]:
  """`texts` as a list of strings; anything else is refused with the first bad item."""
  if isinstance(texts, str):
    raise TypeError(f"{what} takes a list of strings, not a single string")
  if isinstance(texts, (bytes, bytearray)):
    raise TypeError(f"{what} takes a list of strings, not bytes (decode them first)")
  try:
    texts = list(texts)
  except TypeError:
    raise TypeError(f"{what} takes a list of strings, not {type(texts).__name__}") from None
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise TypeError(f"{what}: texts[{i}] is {type(t).__name__} ({t!r:.40}), not a string")
  return texts


def _jit_forward(module, method: str, mesh, rules):
  def apply(p, ids, mask, pool):
    return module.apply({"params": p}, {"input_ids": ids, "attention_mask": mask,
                                        "pool_mask": pool}, method=method)
  if mesh is None:
    return jax.jit(apply)
  return shd.mesh_jit(apply, mesh, rules, out_shardings=shd.replicated(mesh))


_cached_jit_forward = functools.lru_cache(maxsize=8)(_jit_forward)


def _shared_jit(module, method: str, mesh, rules):
  """The jitted forward of (module, method) over `mesh` (None: one device), shared
  by every encoder of an equal module: a process that evaluates many models of one
  architecture (a study's runs, `encode` at each layer) traces each length bucket
  once, not once per model (about 0.6 s a bucket for MiniLM on a CPU). Modules are
  frozen dataclasses, equal when their configs are; one that cannot be hashed gets
  its own."""
  try:
    return _cached_jit_forward(module, method, mesh, rules)
  except TypeError:       # an unhashable field somewhere in the module or the rules
    return _jit_forward(module, method, mesh, rules)


def _params_mesh(params):
  """The mesh the parameters are sharded over, or None on one device."""
  leaf = jax.tree.leaves(params)[0]
  mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
  if not isinstance(mesh, jax.sharding.Mesh) or mesh.size == 1:
    return None
  return mesh


class BatchEncoder:
  """Texts -> pooled, unnormalised vectors [n, layers, width] through any model of the
  embedder interface (`models/embedder.py`), by one of its Linen methods
  (`encode_documents` or `encode_queries`).

  Texts are batched longest first (little padding), each batch padded to
  `batch_size` rows (one compiled shape per length bucket). Parameters sharded over a
  mesh (a model in training, possibly across processes) get their inputs as global
  arrays split over the mesh's batch axes when the batch divides, replicated
  otherwise, under the logical `rules`; the output comes back replicated.
  """

  def __init__(self, module, params, tokenizer: Tokenizer, *, layers: int, width: int,
               method: str = "encode_documents", rules=()):
    self.module, self.params, self.tokenizer = module, params, tokenizer
    self.layers, self.width, self.method, self.rules = layers, width, method, tuple(rules)

  @functools.cached_property
  def _forward(self):
    mesh = _params_mesh(self.params)
    jitted = _shared_jit(self.module, self.method, mesh, self.rules)
    if mesh is None:
      return lambda p, ids, mask, pool: np.asarray(jitted(p, ids, mask, pool))
    rep = shd.replicated(mesh)
    split = shd.batch_sharding(mesh)
    n_split = shd.batch_shards(mesh)

    def call(p, ids, mask, pool):
      sh = split if ids.shape[0] % n_split == 0 else rep
      ids, mask, pool = shd.host_to_global((ids, mask, pool), sh)
      return np.asarray(jitted(p, ids, mask, pool).addressable_data(0))
    return call

  def __call__(self, texts: Sequence[str], *, batch_size: int = 64,
               progress: str | None = None, instruction: str = "") -> np.ndarray:
    """An `instruction` is prepended to each text, attended to but not pooled.
    `progress`: a label; a progress bar (tqdm, on stderr) then counts the texts."""
    texts = _texts(texts)
    batch_size = _count(batch_size, "batch_size", low=1)
    out = np.zeros((len(texts), self.layers, self.width), np.float32)
    # Longest first by token count, so each batch holds texts of about one length and
    # is padded little (characters are a poor proxy for tokens on mixed texts:
    # benchmarks/README.md).
    order = np.argsort(-self.tokenizer.lengths(texts, instruction), kind="stable")
    bar = tqdm.tqdm(total=len(texts), desc=progress, unit="text", disable=not progress,
                    file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    for start in range(0, len(texts), batch_size):
      idx = order[start:start + batch_size]
      enc = self.tokenizer.encode([texts[i] for i in idx], instruction=instruction)
      enc.setdefault("pool_mask", enc["attention_mask"])
      rows = len(idx)
      padded = min(batch_size, 1 << (rows - 1).bit_length())
      if rows < padded:  # a power of two: few shapes to compile, little padding
        enc = {k: np.pad(v, ((0, padded - rows), (0, 0))) for k, v in enc.items()}
      vecs = self._forward(self.params, enc["input_ids"], enc["attention_mask"],
                           enc["pool_mask"])
      out[idx] = vecs[:rows]
      bar.update(rows)
    bar.close()
    return out


def _jit_tokens(module, method: str, mesh, rules):
  def apply(p, ids, mask):
    return module.apply({"params": p}, {"input_ids": ids, "attention_mask": mask},
                        method=method)
  if mesh is None:
    return jax.jit(apply)
  return shd.mesh_jit(apply, mesh, rules, out_shardings=shd.replicated(mesh))


_cached_jit_tokens = functools.lru_cache(maxsize=8)(_jit_tokens)


class TokenEncoder:
  """Texts -> a list of float32 arrays [layers, tokens, width], each text's counted
  tokens (queries: all `query_length`, expansion included; documents: without
  padding and skipped tokens), longest texts first in batches padded to a power of
  two (few compiled shapes)."""

  def __init__(self, module, params, tokenizer, *, method: str = "encode_documents",
               rules=()):
    self.module, self.params, self.tokenizer = module, params, tokenizer
    self.method, self.rules = method, tuple(rules)

  @functools.cached_property
  def _forward(self):
    mesh = _params_mesh(self.params)
    jitted = _cached_jit_tokens(self.module, self.method, mesh, self.rules)
    if mesh is None:
      return lambda p, ids, mask: tuple(np.asarray(x) for x in jitted(p, ids, mask))
    rep, split = shd.replicated(mesh), shd.batch_sharding(mesh)
    n_split = shd.batch_shards(mesh)

    def call(p, ids, mask):
      sh = split if ids.shape[0] % n_split == 0 else rep
      ids, mask = shd.host_to_global((ids, mask), sh)
      return tuple(np.asarray(x.addressable_data(0)) for x in jitted(p, ids, mask))
    return call

  def __call__(self, texts: Sequence[str], *, batch_size: int = 64,
               progress: str | None = None) -> list[np.ndarray]:
    texts = list(texts)
    out: list = [None] * len(texts)
    order = np.argsort(-self.tokenizer.lengths(texts), kind="stable")
    bar = tqdm.tqdm(total=len(texts), desc=progress, unit="text", disable=not progress,
                    file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    for start in range(0, len(texts), batch_size):
      idx = order[start:start + batch_size]
      enc = self.tokenizer.encode([texts[i] for i in idx])
      rows = len(idx)
      padded = min(batch_size, 1 << (rows - 1).bit_length())
      ids, mask = (np.pad(enc[k], ((0, padded - rows), (0, 0)))
                   for k in ("input_ids", "attention_mask"))
      vectors, counted = self._forward(self.params, ids, mask)
      for r, i in enumerate(idx):
        out[i] = np.ascontiguousarray(vectors[r][:, counted[r] > 0], np.float32)
      bar.update(rows)
    bar.close()
    return out
