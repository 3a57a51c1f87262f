"""Export a trained model, optionally truncated to one (layer, dim) sub-model.

* BERT-family models with a parameter-free pooling become a folder that
  sentence-transformers loads as-is: `model.safetensors` + `config.json` with only the
  first `layer` blocks, the tokenizer, `1_Pooling`, a `2_Dense` identity slice to the
  first `dim` coordinates (when dim < hidden), and `3_Normalize`.
* Everything else (decoder LLMs, trainable poolers) becomes a plain Flax folder:
  `params.msgpack` (flax.serialization), `tokenizer.json` and `jaxembed.json` (the
  encoder config, pooling, and the chosen layer and dim), loaded by `jaxembed.load`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from jaxembed.errors import ConfigError

ST_POOLING = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
              "max": "pooling_mode_max_tokens", "last_token": "pooling_mode_lasttoken",
              "weighted_mean": "pooling_mode_weightedmean_tokens"}
FLAX_FORMAT = "jaxembed-flax-v1"


def _check(model, layer, dim):
  layer = model.num_layers if layer is None else int(layer)
  dim = model.hidden_size if dim is None else int(dim)
  if not 1 <= layer <= model.num_layers:
    raise ConfigError(f"--layer={layer} is out of range; valid: 1..{model.num_layers}")
  if not 1 <= dim <= model.hidden_size:
    raise ConfigError(f"--dim={dim} is out of range; valid: 1..{model.hidden_size}")
  return layer, dim


def sentence_transformers_reason(model) -> str | None:
  """Why `model` cannot be a sentence-transformers folder (None if it can)."""
  from jaxembed.models.bert import BertConfig
  if not isinstance(model.bert, BertConfig):
    return f"the encoder is a {type(model.bert).__name__}, not BERT"
  if model.pooling not in ST_POOLING:
    return f"pooling {model.pooling!r} has trainable parameters sentence-transformers lacks"
  return None


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def _prepare(out: str):
  if os.path.exists(out) and os.listdir(out):
    raise ConfigError(f"--out={out} exists and is not empty; choose a new folder")
  os.makedirs(out, exist_ok=True)


def export_sentence_transformers(model, out: str, *, layer=None, dim=None) -> str:
  from safetensors.numpy import save_file
  from jaxembed.models.loading import flax_to_hf
  reason = sentence_transformers_reason(model)
  if reason:
    raise ConfigError(f"cannot export as sentence-transformers: {reason}; use "
                      "--format=flax")
  layer, dim = _check(model, layer, dim)
  _prepare(out)
  from jaxembed.models.loading import unscan_layout
  cfg = dataclasses.replace(model.bert, num_layers=layer, scan_layers=False, remat=False)
  unrolled = unscan_layout(jax_to_numpy({"encoder": model.params["encoder"]}),
                           model.num_layers)
  params = {"encoder": {k: v for k, v in unrolled["encoder"].items()
                        if not k.startswith("layer_") or int(k.split("_")[1]) < layer}}
  params = jax_to_numpy(params)
  save_file(flax_to_hf(params, cfg), os.path.join(out, "model.safetensors"))
  hf = cfg.to_hf()
  _write_json(os.path.join(out, "config.json"), hf)
  shutil.copyfile(model.tokenizer.path, os.path.join(out, "tokenizer.json"))
  _write_json(os.path.join(out, "tokenizer_config.json"), {
      "tokenizer_class": "BertTokenizer", "model_max_length": model.tokenizer.max_length,
      "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
      "cls_token": "[CLS]", "mask_token": "[MASK]"})
  _write_json(os.path.join(out, "sentence_bert_config.json"),
              {"max_seq_length": model.tokenizer.max_length, "do_lower_case": False})
  pooling = {"word_embedding_dimension": cfg.hidden_size, "include_prompt": True}
  pooling.update({key: name == model.pooling for name, key in ST_POOLING.items()})
  _write_json(os.path.join(out, "1_Pooling", "config.json"), pooling)
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  if dim < cfg.hidden_size:   # the Matryoshka prefix as an identity slice
    _write_json(os.path.join(out, "2_Dense", "config.json"), {
        "in_features": cfg.hidden_size, "out_features": dim, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"})
    save_file({"linear.weight": np.eye(cfg.hidden_size, dtype=np.float32)[:dim].copy()},
              os.path.join(out, "2_Dense", "model.safetensors"))
    modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
  if model.default_normalize:
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "3_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    os.makedirs(os.path.join(out, "3_Normalize"), exist_ok=True)
  _write_json(os.path.join(out, "modules.json"), modules)
  _write_json(os.path.join(out, "config_sentence_transformers.json"),
              {"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None})
  _readme(out, f"sentence-transformers folder; layer {layer} of {model.num_layers}, "
               f"dim {dim} of {model.hidden_size}, pooling {model.pooling}")
  return out


def export_flax(model, out: str, *, layer=None, dim=None) -> str:
  import flax.serialization
  layer, dim = _check(model, layer, dim)
  _prepare(out)
  with open(os.path.join(out, "params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(jax_to_numpy(model.params)))
  shutil.copyfile(model.tokenizer.path, os.path.join(out, "tokenizer.json"))
  _write_json(os.path.join(out, "jaxembed.json"), {
      "format": FLAX_FORMAT, "encoder": type(model.bert).__name__,
      "encoder_config": dataclasses.asdict(model.bert), "pooling": model.pooling,
      "pool_heads": model.module.pool_heads, "pool_latents": model.module.pool_latents,
      "layer": layer, "dim": dim, "normalize": bool(model.default_normalize),
      "max_seq_length": model.tokenizer.max_length,
      "padding_side": model.tokenizer.padding_side})
  _readme(out, f"jaxembed Flax folder (jaxembed.load); layer {layer} of "
               f"{model.num_layers}, dim {dim} of {model.hidden_size}, pooling {model.pooling}")
  return out


def load_flax(path: str):
  import flax.serialization
  import jax
  import jax.numpy as jnp
  from jaxembed.api import EmbeddingModel, abstract_model_params
  from jaxembed.data.tokenizer import Tokenizer
  from jaxembed.models.embedder import encoder_config
  with open(os.path.join(path, "jaxembed.json")) as f:
    meta = json.load(f)
  cfg = encoder_config(meta["encoder"], meta["encoder_config"])
  template = abstract_model_params(cfg, meta["pooling"], meta["pool_heads"],
                                   meta["pool_latents"])
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  with open(os.path.join(path, "params.msgpack"), "rb") as f:
    params = flax.serialization.from_bytes(template, f.read())
  params = jax.tree.map(jnp.asarray, params)
  tok = Tokenizer(os.path.join(path, "tokenizer.json"), meta["max_seq_length"],
                  meta["padding_side"])
  return EmbeddingModel(cfg, params, tok, pooling=meta["pooling"],
                        normalize=meta["normalize"], pool_heads=meta["pool_heads"],
                        pool_latents=meta["pool_latents"], default_layer=meta["layer"],
                        default_dim=meta["dim"])


def export(model, out: str, *, layer=None, dim=None, format: str = "auto") -> str:
  """format: auto (sentence-transformers when possible, else flax) |
  sentence-transformers | flax."""
  if format not in ("auto", "sentence-transformers", "flax"):
    raise ConfigError(f"--format={format!r}; valid values: ['auto', "
                      "'sentence-transformers', 'flax']")
  if format == "flax" or (format == "auto" and sentence_transformers_reason(model)):
    return export_flax(model, out, layer=layer, dim=dim)
  return export_sentence_transformers(model, out, layer=layer, dim=dim)


def jax_to_numpy(tree):
  import jax
  return jax.tree.map(lambda x: np.asarray(x), tree)


def _readme(out: str, what: str):
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write(f"# Exported by jaxembed\n\n{what}.\n")
