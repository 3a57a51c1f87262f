"""The public API: `jaxembed.load(path).encode(texts, layer=..., dim=...)`: the model
(`EmbeddingModel`); its batched forward passes are in batch_encode.py, loading is in
loaders.py."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.batch_encode import BatchEncoder, TokenEncoder, _count, _texts
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ConfigError
from jaxembed.models.build import model_from_spec
from jaxembed.models.embedder import make_encoder
from jaxembed.models.multivector import REDUCTIONS
from jaxembed.models.spec import ModelSpec


class EmbeddingModel:
  """A trained or pretrained text embedder: any (layer, dim) sub-model, one pass.

  `spec` describes the model (encoder config, pooling, defaults); `params` is the
  Flax tree `{'encoder': ...[, 'pooler': ...]}`; it may be sharded over a mesh (then
  the forward pass runs where the parameters live, under `rules`).
  """

  def __init__(self, spec: ModelSpec, params, tokenizer: Tokenizer, *, rules=()):
    self.spec = spec
    self.encoder_config = spec.encoder    # BertConfig | DecoderConfig
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
    return self.encoder_config.num_layers

  @property
  def bert(self):
    """The encoder's config, under its old name (it holds decoder configs too)."""
    warnings.warn("EmbeddingModel.bert is now EmbeddingModel.encoder_config",
                  DeprecationWarning, stacklevel=2)
    return self.encoder_config

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
    return self.encoder_config.hidden_size

  def encode_all_layers(self, texts: Sequence[str], *, batch_size: int = 64,
                        progress: str | None = None, instruction: str = "") -> np.ndarray:
    """Pooled, unnormalised vectors of every layer: [len(texts), num_layers, hidden].
    An `instruction` is prepended to each text, attended to but not pooled."""
    return self._encoder(texts, batch_size=batch_size, progress=progress,
                         instruction=instruction)

  @functools.cached_property
  def _token_forward(self):
    encoder = make_encoder(self.encoder_config, name=None)
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

  @property
  def multivector(self) -> bool:
    """Whether this is a multi-vector (late-interaction) model: `encode_multivector`."""
    return self.spec.architecture == "multivector"

  def encode_multivector(self, texts: Sequence[str], *, is_query: bool = False,
                         layer: int | None = None, dim: int | None = None,
                         batch_size: int = 32) -> list[np.ndarray]:
    """A multi-vector model's token vectors: per text a float32 array [tokens, dim],
    rows L2-normalised, of the (layer, dim) cell (default: the exported one, else the
    last layer at full width). Queries (`is_query`) are marked and expanded to the
    model's query length ([MASK] tokens included); documents are marked and keep their
    counted tokens (no padding, no skipped punctuation): what PyLate's
    `encode(..., is_query=...)` returns for the exported folder."""
    if not self.multivector:
      raise ConfigError("encode_multivector needs a multi-vector model (trained with "
                        "model.multivector.dim > 0); this one pools: use encode, or "
                        "encode_tokens for its raw token states")
    texts = _texts(texts, "encode_multivector")
    width = self.module.dim
    layer = _count(self.default_layer or self.num_layers if layer is None else layer,
                   "layer", low=1, high=self.num_layers)
    dim = _count(self.default_dim or width if dim is None else dim, "dim", low=1,
                 high=width)
    key = ("multivector", layer, is_query)
    if key not in self._layer_encoders:
      self._layer_encoders[key] = TokenEncoder(
          self.module.up_to(layer), self.params, self.tokenizer,
          method="encode_queries" if is_query else "encode_documents",
          rules=self._encoder.rules)
    out = []
    for m in self._layer_encoders[key](texts, batch_size=_count(batch_size, "batch_size",
                                                                 low=1)):
      v = m[layer - 1, :, :dim]
      out.append(v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12))
    return out

  def with_token_reduction(self, *, query: tuple[str, int] | None = None,
                           doc: tuple[str, int] | None = None) -> "EmbeddingModel":
    """This multi-vector model with its token vectors reduced at encode time, the
    parameters shared: `doc=('kmeans', 8)` clusters each document's counted tokens
    into 8 centroids as CRISP does in training (applied after training here: the
    post-hoc baseline CRISP compares against); 'tail' and 'spacing' keep k tokens
    (the paper's fixed-selection pruning); ('none', 0) keeps every token. A side
    not given keeps the model's setting."""
    if not self.multivector:
      raise ConfigError("with_token_reduction needs a multi-vector model")
    mv = dict(self.spec.multivector)
    for side, value in (("query", query), ("doc", doc)):
      if value is None:
        continue
      how, k = value
      if how not in REDUCTIONS:
        raise ConfigError(f"{side}=({how!r}, {k}): the reduction must be one of "
                          f"{list(REDUCTIONS)}")
      k = _count(k, f"{side} vectors", low=0 if how == "none" else 1)
      mv[f"{side}_reduce"], mv[f"{side}_vectors"] = how, k
    spec = dataclasses.replace(self.spec, multivector=tuple(sorted(mv.items())))
    return EmbeddingModel(spec, self.params, self.tokenizer, rules=self._encoder.rules)

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
             precision: str = "float32", device: str | None = None,
             output_value: str = "sentence_embedding"):
    """Embeds `sentences` with the sub-model truncated to `layer` (1-based, default
    the last) and the first `dim` coordinates (default all). Returns float32
    [n, dim]; a single string gives one vector [dim]. Only the first `layer` blocks
    run (early exit). `progress`: a label; a progress bar then counts the texts.

    sentence-transformers' arguments mean what they mean there: `truncate_dim` keeps
    the first coordinates of the model's output (not re-normalised),
    `normalize_embeddings=True` normalises after that (False leaves the output as the
    model gives it, normalised when the model normalises), `prompt_name` (a key of
    `prompts`; the folder's default prompt when none is given) or `prompt`
    (= instruction: prepended and attended to; pooled only when the model pools its
    prompts, as a sentence-transformers folder with include_prompt does),
    `output_value` ('token_embeddings': each text's last-layer token states, a list of
    [tokens, hidden] arrays), `show_progress_bar` (= progress),
    `convert_to_numpy=False` (a list of vectors), `convert_to_tensor` (a jax array),
    `precision` ('float32', 'int8', 'uint8', 'binary', 'ubinary': sentence-transformers'
    `quantize_embeddings`, calibrated on these vectors; bits packed per row) and
    `device` (checked, then the model runs where its parameters live).
    """
    if self.multivector:
      raise ConfigError("a multi-vector (late-interaction) model gives token vectors: "
                        "use encode_multivector(texts, is_query=...)")
    single = isinstance(sentences, str)
    texts = [sentences] if single else sentences
    if output_value not in ("sentence_embedding", "token_embeddings"):
      raise ConfigError(f"output_value={output_value!r}; valid: 'sentence_embedding', "
                        "'token_embeddings'")
    # sentence-transformers' normalize_embeddings / truncate_dim act on the model's
    # output (its Normalize module already applied): truncation does not re-normalise,
    # and normalize_embeddings=False does not undo the model's normalisation. jaxembed's
    # dim / normalize choose a Matryoshka sub-model and whether it normalises.
    st_args = normalize_embeddings is not None or truncate_dim is not None
    if st_args and (dim is not None or normalize is not None):
      raise ConfigError("give jaxembed's dim / normalize or sentence-transformers' "
                        "truncate_dim / normalize_embeddings, not both")
    texts, instruction = self._prompted(texts, instruction, prompt_name, prompt)
    if output_value == "token_embeddings":
      # sentence-transformers: the last layer's states of each text's tokens (the
      # prompt's included), not normalised
      prompted = [instruction + t for t in _texts(texts)] if instruction else texts
      tokens = self.encode_tokens(prompted, layer=layer, batch_size=batch_size,
                                  normalize=False)
      return tokens[0] if single else tokens
    if show_progress_bar and progress is None:
      progress = "encode"
    _check_device(device)
    if precision not in PRECISIONS:
      raise ConfigError(f"precision={precision!r}; valid: {list(PRECISIONS)}")
    layer = (self.default_layer or self.num_layers) if layer is None else _count(
        layer, "layer", low=1, high=self.num_layers)
    dim = (self.default_dim or self.hidden_size) if dim is None else _count(
        dim, "dim", low=1, high=self.spec.head_width or self.hidden_size)
    vecs = self._layer_encoder(layer)(texts, batch_size=batch_size, progress=progress,
                                      instruction=instruction)[:, 0, :dim]
    if self.default_normalize if normalize is None else normalize:
      vecs = _unit(vecs)
    if truncate_dim is not None:
      vecs = vecs[:, :_count(truncate_dim, "truncate_dim", low=1, high=dim)]
    if normalize_embeddings:
      vecs = _unit(vecs)
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
    return {**dict(self.spec.prompts), **({"query": q} if q else {})}

  @property
  def max_seq_length(self) -> int:
    return self.tokenizer.max_length

  def get_sentence_embedding_dimension(self) -> int:
    return self.default_dim or self.hidden_size

  def _prompted(self, texts, instruction: str, prompt_name: str | None,
                prompt: str | None):
    """(texts, instruction): the prompt chosen by `instruction`, `prompt`, `prompt_name`
    or the model's default prompt name; prepended to each text when the model pools its
    prompts (sentence-transformers' include_prompt), else the instruction (attended to,
    not pooled)."""
    given = [n for n, v in (("instruction", instruction), ("prompt", prompt),
                            ("prompt_name", prompt_name)) if v]
    if len(given) > 1:
      raise ConfigError(f"give one of instruction, prompt and prompt_name, not {given}")
    if not given and self.spec.default_prompt_name:
      prompt_name = self.spec.default_prompt_name
    if prompt_name:
      if prompt_name not in self.prompts:
        raise ConfigError(f"prompt_name={prompt_name!r} is not a prompt of this model; "
                          f"valid: {sorted(self.prompts)}")
      chosen = self.prompts[prompt_name]
    else:
      chosen = prompt or instruction or ""
    if chosen and self.spec.include_prompt:
      return [chosen + t for t in _texts(texts)], ""
    return texts, chosen

  def encode_query(self, sentences: str | Sequence[str], **kwargs):
    """`encode` with the model's query prompt (the instruction it trained with, or a
    folder's prompt named 'query'), as sentence-transformers' `encode_query`."""
    return self.encode(sentences, **self._task_prompt(kwargs, ("query",)))

  def encode_document(self, sentences: str | Sequence[str], **kwargs):
    """`encode` with a folder's prompt named 'document' ('passage', 'corpus'), as
    sentence-transformers' `encode_document`; without one, no prompt (documents are
    encoded as jaxembed trained them)."""
    return self.encode(sentences,
                       **self._task_prompt(kwargs, ("document", "passage", "corpus")))

  def _task_prompt(self, kwargs: dict, names: tuple) -> dict:
    if any(kwargs.get(k) for k in ("instruction", "prompt", "prompt_name")):
      return kwargs
    name = next((n for n in names if n in self.prompts), None)
    return dict(kwargs, prompt_name=name) if name else kwargs

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
  if len(vecs) < 2:
    raise ConfigError(f"precision={precision!r} calibrates each coordinate's range on the "
                      f"vectors encoded together, and {len(vecs)} give no range: encode "
                      "a calibration set with them, or use 'binary' / 'ubinary'")
  lo, hi = vecs.min(axis=0), vecs.max(axis=0)
  steps = (hi - lo) / 255
  steps = np.where(steps > 0, steps, 1.0)
  scaled = (vecs - lo) / steps
  return (scaled - 128).astype(np.int8) if precision == "int8" else scaled.astype(np.uint8)


def _unit(vecs: np.ndarray) -> np.ndarray:
  return vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)


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
