"""Hugging Face safetensors <-> the Flax trees of the BERT and decoder encoders, by
each model's two-way weight table."""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os

import numpy as np
import safetensors

from jaxembed.errors import ModelLoadError
from jaxembed.models import bert, decoder, weights
from jaxembed.models.bert import BertConfig
from jaxembed.models.decoder import DecoderConfig


INDEX_SUFFIX = ".safetensors.index.json"


class LazyTensors(collections.abc.Mapping):
  """Tensors by name, read from their files one at a time when asked for: a sharded
  checkpoint (`model.safetensors.index.json` and its shard files), or one file. Names
  may be shown without a wrapper prefix (`strip`), still without reading anything."""

  def __init__(self, files: dict[str, str], source: str, strip: str = ""):
    self._files, self.source, self._strip = files, source, strip
    self._names = {k[len(strip):]: k for k in files if k.startswith(strip)}

  @classmethod
  def open(cls, path: str) -> "LazyTensors":
    if path.endswith(INDEX_SUFFIX):
      try:
        with open(path) as f:
          weight_map = json.load(f)["weight_map"]
      except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: not a safetensors index with a weight_map ({e})") from e
      folder = os.path.dirname(path)
      files = {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
      for shard in sorted(set(files.values())):
        if not os.path.isfile(shard):
          raise ModelLoadError(f"{path}: shard {shard} is missing")
      return cls(files, path)
    try:
      with safetensors.safe_open(path, framework="numpy") as f:
        names = list(f.keys())
    except Exception as e:  # a truncated or non-safetensors file
      raise ModelLoadError(f"{path}: cannot be read as safetensors ({e})") from e
    return cls({name: path for name in names}, path)

  def without_prefix(self, prefix: str) -> "LazyTensors":
    return LazyTensors({self._names[k]: self._files[self._names[k]] for k in self._names},
                       self.source, self._strip + prefix)

  def __getitem__(self, name: str) -> np.ndarray:
    full = self._names[name]
    try:
      with safetensors.safe_open(self._files[full], framework="numpy") as f:
        return f.get_tensor(full)
    except Exception as e:
      raise ModelLoadError(f"{self._files[full]}: cannot read tensor {full!r} ({e})") from e

  def __iter__(self):
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


def _strip_prefix(tensors, source: str):
  """Drops a wrapper prefix ('bert.', 'model.0.auto_model.', ...) shared by all names."""
  anchor = "embeddings.word_embeddings.weight"
  hits = [k for k in tensors if k.endswith(anchor)]
  if not hits:
    raise ModelLoadError(f"{source}: no tensor named '*{anchor}'; is this a BERT checkpoint?")
  prefix = hits[0][: -len(anchor)]
  if isinstance(tensors, LazyTensors):
    return tensors.without_prefix(prefix)
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def bert_hf_to_flax(tensors, cfg: BertConfig, source: str = "checkpoint",
                    place=None) -> dict:
  """HF BERT tensors (any wrapper prefix) -> `{'encoder': {...}}` (unrolled). `place`:
  see `weights.to_flax`."""
  return weights.to_flax(
      _strip_prefix(tensors, source), bert.hf_weight_table(cfg),
      weights.text_encoder_shapes(bert.BertEncoder(dataclasses.replace(cfg, scan_layers=False))),
      source, describe=f"hidden={cfg.hidden_size}, heads={cfg.num_heads}, "
                       f"layers={cfg.num_layers}, vocab={cfg.vocab_size}", place=place)


def decoder_hf_to_flax(tensors, cfg: DecoderConfig, source: str = "decoder weights",
                       place=None) -> dict:
  """HF Llama / Qwen2 / Mistral tensors (with or without the 'model.' prefix of a
  *ForCausalLM checkpoint) -> `{'encoder': {...}}` (unrolled). `place`: see
  `weights.to_flax`."""
  if isinstance(tensors, LazyTensors):
    prefixed = any(k.startswith("model.") for k in tensors)
    t = tensors.without_prefix("model.") if prefixed else tensors
  else:
    t = {k.removeprefix("model."): v for k, v in tensors.items()}
  return weights.to_flax(
      t, decoder.hf_weight_table(cfg),
      weights.text_encoder_shapes(decoder.DecoderEncoder(dataclasses.replace(cfg, scan_layers=False))),
      source, describe=f"hidden={cfg.hidden_size}, heads={cfg.num_heads}/"
                       f"{cfg.num_kv_heads}, layers={cfg.num_layers}, vocab={cfg.vocab_size}",
      place=place)


def flax_to_hf(params: dict, cfg) -> dict[str, np.ndarray]:
  """The inverse of loading: HF tensor names of a BERT or decoder config (any layout)."""
  table = (decoder.hf_weight_table(cfg) if isinstance(cfg, DecoderConfig)
           else bert.hf_weight_table(cfg))
  return weights.to_hf(weights.unscan_layout(params, cfg.num_layers), table)


def load_bert_safetensors(path: str, cfg: BertConfig, place=None) -> dict:
  """A BERT checkpoint (one file, or a sharded one's index), read tensor by tensor."""
  return bert_hf_to_flax(LazyTensors.open(path), cfg, source=path, place=place)
