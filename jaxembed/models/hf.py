"""Hugging Face safetensors <-> the Flax trees of the BERT and decoder encoders, by
each model's two-way weight table."""

from __future__ import annotations

import dataclasses

import numpy as np
import safetensors.numpy

from jaxembed.errors import ModelLoadError
from jaxembed.models import bert, decoder, weights
from jaxembed.models.bert import BertConfig
from jaxembed.models.decoder import DecoderConfig


def _strip_prefix(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Drops a wrapper prefix ('bert.', 'model.0.auto_model.', ...) shared by all names."""
  anchor = "embeddings.word_embeddings.weight"
  hits = [k for k in tensors if k.endswith(anchor)]
  if not hits:
    raise ModelLoadError(f"{source}: no tensor named '*{anchor}'; is this a BERT checkpoint?")
  prefix = hits[0][: -len(anchor)]
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def bert_hf_to_flax(tensors: dict[str, np.ndarray], cfg: BertConfig,
                    source: str = "checkpoint") -> dict:
  """HF BERT tensors (any wrapper prefix) -> `{'encoder': {...}}` (unrolled)."""
  return weights.to_flax(
      _strip_prefix(tensors, source), bert.hf_weight_table(cfg),
      weights.text_encoder_shapes(bert.BertEncoder(dataclasses.replace(cfg, scan_layers=False))),
      source, describe=f"hidden={cfg.hidden_size}, heads={cfg.num_heads}, "
                       f"layers={cfg.num_layers}, vocab={cfg.vocab_size}")


def decoder_hf_to_flax(tensors: dict[str, np.ndarray], cfg: DecoderConfig,
                       source: str = "decoder weights") -> dict:
  """HF Llama / Qwen2 / Mistral tensors (with or without the 'model.' prefix of a
  *ForCausalLM checkpoint) -> `{'encoder': {...}}` (unrolled)."""
  t = {k.removeprefix("model."): v for k, v in tensors.items()}
  return weights.to_flax(
      t, decoder.hf_weight_table(cfg),
      weights.text_encoder_shapes(decoder.DecoderEncoder(dataclasses.replace(cfg, scan_layers=False))),
      source, describe=f"hidden={cfg.hidden_size}, heads={cfg.num_heads}/"
                       f"{cfg.num_kv_heads}, layers={cfg.num_layers}, vocab={cfg.vocab_size}")


def flax_to_hf(params: dict, cfg) -> dict[str, np.ndarray]:
  """The inverse of loading: HF tensor names of a BERT or decoder config (any layout)."""
  table = (decoder.hf_weight_table(cfg) if isinstance(cfg, DecoderConfig)
           else bert.hf_weight_table(cfg))
  return weights.to_hf(weights.unscan_layout(params, cfg.num_layers), table)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load_file(path)
  except Exception as e:  # a truncated or non-safetensors file
    raise ModelLoadError(f"{path}: cannot be read as safetensors ({e})") from e


def load_bert_safetensors(path: str, cfg: BertConfig) -> dict:
  return bert_hf_to_flax(read_safetensors(path), cfg, source=path)
