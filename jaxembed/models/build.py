"""Config -> encoder config -> module -> abstract parameters: how a run's model is
built, for the trainer and for `jaxembed.load` alike.

Model-level settings are checked here, before anything is built, and errors name the
field and list the valid values.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tokenizers

from jaxembed import precision
from jaxembed.errors import ConfigError
from jaxembed.models.bert import BertConfig
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.embedder import Embedder
from jaxembed.models import lora
from jaxembed.models.loading import ModelFolder, read_json_file
from jaxembed.models.multivector import (REDUCTIONS, MultiVectorEmbedder, multivector_fields,
                                         special_ids)
from jaxembed.models.pooling import TRAINABLE, check_pooling
from jaxembed.models.spec import ModelSpec
from jaxembed.models.two_tower import TOWERS, TwoTower
from jaxembed.models.vit import ViTConfig

ENCODERS = ("bert", "decoder", "two_tower")
# Settings of model.decoder that apply to a pretrained decoder too (the shapes come
# from its config.json).
_DECODER_RUNTIME = ("attention", "scan_layers", "remat", "dtype", "hidden_dropout",
                    "attention_dropout")


def check_model_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if m.init not in ("pretrained", "random"):
    raise ConfigError(f"model.init={m.init!r}; valid: ['pretrained', 'random']")
  if m.encoder not in ENCODERS:
    raise ConfigError(f"model.encoder={m.encoder!r}; valid values: {list(ENCODERS)}")
  check_pooling(m.pooling)
  if m.centred_exits and m.encoder == "two_tower":
    raise ConfigError("model.centred_exits centres a single-tower text embedder's "
                      "layers; model.encoder='two_tower' has none to centre")
  k = m.exit_components
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise ConfigError(f"model.exit_components={k!r} must be an integer >= 0")
  if k and not m.centred_exits:
    raise ConfigError(f"model.exit_components={k} removes directions from centred exits; "
                      "set model.centred_exits=True")
  if m.refresh_exits_at_end and not m.centred_exits:
    raise ConfigError("model.refresh_exits_at_end re-estimates centred exits' "
                      "statistics; set model.centred_exits=True")
  if not isinstance(m.centring_texts, int) or m.centring_texts < 1:
    raise ConfigError(f"model.centring_texts={m.centring_texts!r} must be an integer "
                      ">= 1")
  if config.data.padding_side not in ("right", "left"):
    raise ConfigError(f"data.padding_side={config.data.padding_side!r}; valid values: "
                      "['right', 'left']")
  if config.data.padding_side == "left" and m.pooling == "cls":
    raise ConfigError("model.pooling='cls' reads position 0, which is padding under "
                      "data.padding_side='left'; use 'last_token' or pad on the right")


def text_encoder_config(config: ml_collections.ConfigDict, folder: ModelFolder):
  """The (text) encoder's config: BERT from the model folder (+ model.bert_overrides),
  or the decoder LLM from a Llama/Qwen2 folder or, with model.init=random, from
  model.decoder on the folder's vocabulary. For model.encoder='two_tower', the text
  tower's (model.two_tower.text_encoder)."""
  kind = config.model.encoder
  if kind not in ENCODERS:
    raise ConfigError(f"model.encoder={kind!r}; valid values: {list(ENCODERS)}")
  if kind == "two_tower":
    kind = config.model.two_tower.text_encoder
    if kind not in ("bert", "decoder"):
      raise ConfigError(f"model.two_tower.text_encoder={kind!r}; valid values: "
                        "['bert', 'decoder']")
  if head_of(folder) != (False, False, 0) and (
      config.model.init != "pretrained" or config.model.encoder == "two_tower"
      or config.model.get("multivector", {}).get("dim", 0)):
    raise ConfigError(f"model.path={config.model.path!r} maps its pooled vector through "
                      "Dense / LayerNorm modules, which a single-vector model trained "
                      "from its pretrained weights keeps (model.init='pretrained', "
                      "encoder 'bert' or 'decoder'); this config would drop them")
  if kind == "decoder":
    cfg = _decoder_config(config, folder)
  elif not isinstance(folder.encoder_config, BertConfig):
    raise ConfigError(f"model.encoder='bert' but model.path={config.model.path!r} holds a "
                      f"{type(folder.encoder_config).__name__}; set model.encoder='decoder'")
  else:
    overrides = dict(config.model.bert_overrides)
    valid = {f.name for f in dataclasses.fields(BertConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
      raise ConfigError(f"model.bert_overrides: unknown fields {bad}; valid: {sorted(valid)}")
    dtype = config.model.get("dtype", "")
    if dtype not in ("",) + precision.DTYPES:
      raise ConfigError(f"model.dtype={dtype!r}; valid values: {list(precision.DTYPES)} "
                        "('' keeps the folder's float32)")
    dtype = precision.resolve(dtype)
    if dtype and "dtype" not in overrides:
      overrides["dtype"] = dtype
    if not config.train.dropout:
      overrides.update(hidden_dropout=0.0, attention_dropout=0.0)
    cfg = BertConfig(**{**dataclasses.asdict(folder.encoder_config), **overrides})
  if config.model.pooling in TRAINABLE and cfg.hidden_size % config.model.pool_heads:
    raise ConfigError(f"model.pool_heads={config.model.pool_heads} must divide the hidden "
                      f"size {cfg.hidden_size} (model.pooling={config.model.pooling!r})")
  return cfg


def _decoder_config(config, folder) -> DecoderConfig:
  d = dict(config.model.decoder)
  if not config.train.dropout:
    d.update(hidden_dropout=0.0, attention_dropout=0.0)
  # A random decoder takes its shape from model.decoder whatever the folder holds (a
  # Llama folder or a BERT one lends its tokenizer's vocabulary only); a pretrained one
  # keeps the folder's shape and takes only the runtime fields.
  if isinstance(folder.encoder_config, DecoderConfig) and config.model.init != "random":
    return DecoderConfig(**{**dataclasses.asdict(folder.encoder_config),
                            **{k: d[k] for k in _DECODER_RUNTIME}})
  if config.model.init == "pretrained":
    raise ConfigError(f"model.encoder='decoder' with model.init='pretrained' needs a "
                      f"Llama/Qwen2/Mistral folder; model.path={config.model.path!r} holds "
                      "a BERT. Use model.init='random' to train a decoder from scratch on "
                      "its tokenizer")
  return DecoderConfig(**{**d, "vocab_size": folder.encoder_config.vocab_size,
                          "max_position_embeddings": max(d["max_position_embeddings"],
                                                         config.data.seq_len)})


def head_of(folder) -> tuple[bool, bool, int]:
  """(head, head_norm, head_width) of a model folder's modules after pooling: its Dense
  chain composed into Embedder.head (the chain's output width, 0 when it keeps the
  encoder's), its LayerNorm as Embedder.head_norm. Read from the modules' configs."""
  dense, norm = getattr(folder, "dense", ()), getattr(folder, "layer_norm", "")
  if not dense:
    return False, bool(norm), 0
  hidden = folder.encoder_config.hidden_size
  cfg_path = os.path.join(dense[-1], "config.json")
  width = read_json_file(cfg_path).get("out_features", hidden) if os.path.isfile(
      cfg_path) else hidden
  if not isinstance(width, int) or not 0 < width <= hidden:
    raise ConfigError(f"{cfg_path}: out_features={width!r} must be in 1..{hidden}")
  return True, bool(norm), 0 if width == hidden else width


def build_model(config: ml_collections.ConfigDict, text_config, folder=None):
  """The model a run trains: an Embedder over `text_config`, a TwoTower when
  model.encoder='two_tower', a MultiVectorEmbedder when model.multivector.dim > 0 (its
  special tokens read from `folder`'s tokenizer). Each implements the interface in
  `models/embedder.py`."""
  m = config.model
  mv = m.get("multivector")
  if mv is not None and mv.dim:
    return _multivector_model(config, text_config, folder)
  if m.encoder != "two_tower":
    head, head_norm, head_width = head_of(folder) if m.init == "pretrained" else (
        False, False, 0)
    return Embedder(text_config, pooling=m.pooling, pool_heads=m.pool_heads,
                    pool_latents=m.pool_latents, centred_exits=bool(m.centred_exits),
                    exit_components=int(m.exit_components), head=head,
                    head_norm=head_norm, head_width=head_width)
  t = m.two_tower
  if t.towers not in TOWERS:
    raise ConfigError(f"model.two_tower.towers={t.towers!r}; valid values: {list(TOWERS)}")
  check_pooling(t.image_pooling, "model.two_tower.image_pooling")
  image = ViTConfig(**dict(m.vit)) if t.towers == "image_text" else None
  return TwoTower(t.towers, text=text_config, image=image, shared=t.shared,
                  image_pooling=t.image_pooling, text_pooling=m.pooling,
                  embed_dim=t.embed_dim, pool_heads=m.pool_heads,
                  pool_latents=m.pool_latents)


def _multivector_model(config, text_config, folder):
  mv = config.model.multivector
  for name, low in (("dim", 1), ("query_length", 1), ("query_vectors", 0),
                    ("doc_vectors", 0), ("kmeans_iterations", 0)):
    value = mv.get(name, low)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(f"model.multivector.{name}={value!r} must be an integer >= {low}")
  reduce = {}
  for side in ("query", "doc"):
    how, k = mv.get(f"{side}_reduce", "none"), mv.get(f"{side}_vectors", 0)
    if how not in REDUCTIONS:
      raise ConfigError(f"model.multivector.{side}_reduce={how!r}; valid values: "
                        f"{list(REDUCTIONS)}")
    if (how == "none") != (k == 0):
      raise ConfigError(f"model.multivector.{side}_reduce={how!r} with {side}_vectors={k}:"
                        f" a reduction needs a number of vectors > 0, 'none' needs 0")
    reduce.update({f"{side}_reduce": how, f"{side}_vectors": k})
  if config.model.encoder != "bert" or config.model.centred_exits:
    raise ConfigError("model.multivector works with model.encoder='bert' and without "
                      f"model.centred_exits, not encoder={config.model.encoder!r}, "
                      f"centred_exits={config.model.centred_exits}")
  if folder is None:
    raise ValueError("a multi-vector model needs its folder's tokenizer")
  tok = tokenizers.Tokenizer.from_file(folder.tokenizer)
  ids = special_ids(tok, query_prefix=mv.query_prefix, document_prefix=mv.document_prefix,
                    skip_punctuation=bool(mv.skip_punctuation))
  return MultiVectorEmbedder(text_config, dim=mv.dim, query_length=mv.query_length,
                             expand_queries=bool(mv.expand_queries),
                             attend_to_expansion=bool(mv.attend_to_expansion),
                             kmeans_iterations=mv.get("kmeans_iterations", 5), **reduce,
                             **ids)


def model_from_spec(spec: ModelSpec) -> Embedder:
  """The single-tower embedder a saved model describes (a MultiVectorEmbedder for
  architecture 'multivector')."""
  if spec.architecture == "multivector":
    return MultiVectorEmbedder(spec.encoder, **dict(spec.multivector))
  return Embedder(spec.encoder, pooling=spec.pooling, pool_heads=spec.pool_heads,
                  pool_latents=spec.pool_latents, centred_exits=spec.centred_exits,
                  exit_components=spec.exit_components, head=spec.head,
                  head_norm=spec.head_norm, head_width=spec.head_width)


def run_spec(config: ml_collections.ConfigDict, model) -> ModelSpec:
  """The saved-model description of a run's model (what `jaxembed.load` reads back
  from its workdir). The encoder is saved to compute in float32: model.dtype is a
  training setting (`EmbeddingModel.with_dtype` picks bfloat16 for inference)."""
  text = model.text_config
  if getattr(text, "dtype", "float32") != "float32":
    text = dataclasses.replace(text, dtype="float32")
  return ModelSpec(
      encoder=text, pooling=config.model.pooling, pool_heads=config.model.pool_heads,
      pool_latents=config.model.pool_latents,
      centred_exits=model.centred_exits, exit_components=model.exit_components,
      max_seq_length=min(config.eval.max_length, text.max_position_embeddings),
      padding_side=config.data.padding_side, normalize=True,
      query_instruction=config.data.query_instruction,
      head=model.head, head_norm=model.head_norm,
      head_width=getattr(model, "head_width", 0), dim=getattr(model, "head_width", 0) or None,
      architecture=("multivector" if model.multivector else
                    "two_tower" if config.model.encoder == "two_tower" else "embedder"),
      multivector=multivector_fields(model) if model.multivector else ())


def abstract_boxed_params(model):
  """Shapes of the model's parameter tree with their logical-axis boxes (for the
  shardings), without allocating it."""
  inputs = model.example_inputs()
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))["params"]


def abstract_params(model, loss_params: dict | None = None, lora_config=None):
  """Shapes of the parameter tree (no memory), unboxed: {'encoder': ...}, 'pooler'
  for a trainable pooling, 'lora' with LoRA factors (`lora_config`: optim.lora, rank >
  0) and, if the objective has parameters of its own, 'loss'."""
  shapes = nn.unbox(abstract_boxed_params(model))
  if lora_config is not None and int(lora_config.rank) > 0:
    shapes = dict(shapes, **{lora.GROUP: lora.shapes(shapes, lora_config)})
  if loss_params:
    shapes = dict(shapes, loss=jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), loss_params))
  return shapes
