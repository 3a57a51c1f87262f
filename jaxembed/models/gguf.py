"""GGUF files (llama.cpp's single-file format) as model folders.

A Llama-architecture GGUF file is read with the maintained `gguf` package, its tensors
dequantised to float32 and renamed to the Hugging Face Llama layout (llama.cpp's
converter permutes the rows of the query and key projections for its RoPE; that
permutation is undone here), its hyper-parameters written as a Llama `config.json`,
and its byte-level BPE vocabulary and merges (GGUF metadata) built into a
`tokenizer.json` with `tokenizers`. The folder is written once under the cache
directory, keyed by the file's path, size and modification time, and from then on
read like any model folder (`read_model_folder`).

Supported: `general.architecture = llama`, `tokenizer.ggml.model = gpt2` (byte-level
BPE) with the pre-tokenizers named 'smollm' (each digit alone, then GPT-2's split) and
'gpt2'/'default' (GPT-2's split).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import safetensors.numpy

from jaxembed.errors import ModelLoadError
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.embedder import check_encoder_config

CACHE = os.path.expanduser(os.environ.get("JAXEMBED_GGUF_CACHE", "~/.cache/jaxembed/gguf"))
# GGUF tensor names (per block) -> Hugging Face Llama names.
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
# GPT-2's pre-tokenizer split (what ByteLevel(use_regex=True) applies).
_PRETOKENIZERS = {"smollm": [{"type": "Digits", "individual_digits": True}],
                  "gpt2": [], "default": []}
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER = 3, 4


def _reader(path: str):
  try:
    import gguf
  except ImportError as e:
    raise ModelLoadError(f"{path}: reading GGUF files needs the `gguf` package "
                         "(pip install 'jaxembed[gguf]')") from e
  try:
    return gguf, gguf.GGUFReader(path)
  except Exception as e:     # not a GGUF file, or a truncated one
    raise ModelLoadError(f"{path}: cannot be read as GGUF ({e})") from e


def _field(reader, key: str, path: str, default=None):
  f = reader.fields.get(key)
  if f is None:
    if default is None:
      raise ModelLoadError(f"{path}: GGUF metadata lacks {key!r}")
    return default
  return f.contents()


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """The inverse of llama.cpp's `permute` of q/k projection rows ([out, in]): within
  each head, rows (0, 2, 4, ..., 1, 3, 5, ...) back to (first half, second half)."""
  out = w.shape[0]
  return (w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def hf_config(reader, path: str) -> dict:
  arch = _field(reader, "general.architecture", path)
  if arch != "llama":
    raise ModelLoadError(f"{path}: general.architecture={arch!r}; jaxembed reads "
                         "GGUF files of the 'llama' architecture")
  g = lambda k, d=None: _field(reader, f"llama.{k}", path, d)
  heads = int(g("attention.head_count"))
  hidden = int(g("embedding_length"))
  rope_dim = int(g("rope.dimension_count", hidden // heads))
  if rope_dim != hidden // heads:
    raise ModelLoadError(f"{path}: rope.dimension_count={rope_dim} is not the head "
                         f"size {hidden // heads} (partial RoPE is not supported)")
  if reader.fields.get("llama.rope.scaling.type") is not None:
    raise ModelLoadError(f"{path}: RoPE scaling is not supported")
  tokens = reader.fields["tokenizer.ggml.tokens"]
  return {"architectures": ["LlamaModel"], "model_type": "llama",
          "vocab_size": int(g("vocab_size", len(tokens.data))), "hidden_size": hidden,
          "num_hidden_layers": int(g("block_count")), "num_attention_heads": heads,
          "num_key_value_heads": int(g("attention.head_count_kv", heads)),
          "intermediate_size": int(g("feed_forward_length")),
          "max_position_embeddings": int(g("context_length", 2048)),
          "rope_theta": float(g("rope.freq_base", 10000.0)),
          "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
          "hidden_act": "silu", "tie_word_embeddings": True, "torch_dtype": "float32"}


def check_sizes(config: dict, reader, path: str) -> None:
  """The declared sizes within bounds, and every tensor they imply present in the file
  with its shape (and nothing else), before anything is dequantised or allocated: a
  file that declares a million blocks or a 2^30 width and holds no such tensors is
  refused here."""
  check_encoder_config(DecoderConfig, {
      "vocab_size": config["vocab_size"], "hidden_size": config["hidden_size"],
      "num_layers": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
      "num_kv_heads": config["num_key_value_heads"],
      "intermediate_size": config["intermediate_size"],
      "max_position_embeddings": config["max_position_embeddings"]}, path)
  h, nh, nkv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
  if nkv < 1 or nh % nkv:
    raise ModelLoadError(f"{path}: {nh} heads do not split into {nkv} key/value heads")
  hd, inter, vocab = h // nh, config["intermediate_size"], config["vocab_size"]
  # GGUF lists a tensor's dims innermost first: [in, out] for a projection.
  want = {"token_embd.weight": (h, vocab), "output_norm.weight": (h,)}
  per_block = {"attn_norm": (h,), "ffn_norm": (h,), "attn_q": (h, nh * hd),
               "attn_k": (h, nkv * hd), "attn_v": (h, nkv * hd), "attn_output": (nh * hd, h),
               "ffn_gate": (h, inter), "ffn_up": (h, inter), "ffn_down": (inter, h)}
  have = {t.name: tuple(int(x) for x in t.shape.tolist()) for t in reader.tensors}
  blocks = {n.split(".")[1] for n in have if n.startswith("blk.")}
  if blocks != {str(i) for i in range(config["num_hidden_layers"])}:
    raise ModelLoadError(f"{path}: declares {config['num_hidden_layers']} blocks and "
                         f"holds tensors for {len(blocks)}")
  for i in range(config["num_hidden_layers"]):
    want.update({f"blk.{i}.{part}.weight": shape for part, shape in per_block.items()})
  for name, shape in want.items():
    if name not in have:
      raise ModelLoadError(f"{path}: tensor {name!r} is missing")
    if have[name] != shape:
      raise ModelLoadError(f"{path}: tensor {name!r} has shape {list(have[name])}; the "
                           f"metadata implies {list(shape)}")
  extra = sorted(set(have) - set(want) - {"output.weight", "rope_freqs.weight"})
  if extra:
    raise ModelLoadError(f"{path}: unexpected tensor {extra[0]!r}")


def hf_tensors(gguf, reader, config: dict, path: str) -> dict[str, np.ndarray]:
  """Dequantised float32 tensors under Hugging Face Llama names ([out, in])."""
  check_sizes(config, reader, path)
  heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
  out = {}
  for t in reader.tensors:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape([int(x) for x in reversed(t.shape.tolist())])
    name = t.name
    if name == "token_embd.weight":
      out["model.embed_tokens.weight"] = w
    elif name == "output_norm.weight":
      out["model.norm.weight"] = w
    elif name == "output.weight":
      continue                        # the LM head: an embedder has none
    elif name.startswith("blk."):
      _, i, part, _ = name.split(".")
      if part not in _BLOCK:
        raise ModelLoadError(f"{path}: unexpected tensor {name!r}")
      if part == "attn_q":
        w = unpermute_rope(w, heads)
      elif part == "attn_k":
        w = unpermute_rope(w, kv_heads)
      out[f"model.layers.{i}.{_BLOCK[part]}.weight"] = w
    elif name != "rope_freqs.weight":
      raise ModelLoadError(f"{path}: unexpected tensor {name!r}")
  return out


def tokenizer_json(reader, path: str) -> dict:
  """A byte-level BPE `tokenizer.json` from the GGUF vocabulary, merges and special
  tokens (control and user-defined token types)."""
  kind = _field(reader, "tokenizer.ggml.model", path)
  pre = _field(reader, "tokenizer.ggml.pre", path, "default")
  if kind != "gpt2" or pre not in _PRETOKENIZERS:
    raise ModelLoadError(f"{path}: tokenizer {kind!r} with pre-tokenizer {pre!r}; "
                         "jaxembed builds byte-level BPE (gpt2) tokenizers with the "
                         f"pre-tokenizers {sorted(_PRETOKENIZERS)}")
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  types = _field(reader, "tokenizer.ggml.token_type", path, [1] * len(tokens))
  merges = _field(reader, "tokenizer.ggml.merges", path)
  special = [{"id": i, "content": tok, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, (tok, kind_) in enumerate(zip(tokens, types))
             if kind_ in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER)]
  byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                "use_regex": True}
  return {
      "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
      "normalizer": None,
      "pre_tokenizer": {"type": "Sequence",
                        "pretokenizers": _PRETOKENIZERS[pre] + [byte_level]},
      "post_processor": dict(byte_level, trim_offsets=False),
      "decoder": dict(byte_level),
      "model": {"type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": {tok: i for i, tok in enumerate(tokens)},
                "merges": [m.split(" ", 1) for m in merges]}}


def _key(path: str) -> str:
  st = os.stat(path)
  digest = hashlib.sha256(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
                          .encode()).hexdigest()[:16]
  return f"{os.path.basename(path).removesuffix('.gguf')}-{digest}"


def gguf_folder(path: str, cache: str = CACHE) -> str:
  """The model folder (config.json, model.safetensors, tokenizer.json) of a GGUF file,
  converted on first use and cached; a conversion killed halfway leaves no folder."""
  if not os.path.isfile(path):
    raise ModelLoadError(f"{path}: no such GGUF file")
  folder = os.path.join(cache, _key(path))
  if os.path.isfile(os.path.join(folder, "tokenizer.json")):
    return folder
  gguf, reader = _reader(path)
  try:
    config = hf_config(reader, path)
    tensors = hf_tensors(gguf, reader, config, path)
    tok = tokenizer_json(reader, path)
  except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as e:
    if isinstance(e, ModelLoadError):
      raise
    raise ModelLoadError(f"{path}: metadata jaxembed cannot use ({type(e).__name__}: "
                         f"{str(e)[:200]})") from e
  os.makedirs(cache, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".converting-", dir=cache)
  try:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=1)
    safetensors.numpy.save_file(tensors, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
      json.dump(tok, f, ensure_ascii=False)
    os.replace(tmp, folder) if not os.path.exists(folder) else shutil.rmtree(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder
