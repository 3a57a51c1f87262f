"""Export a trained model, optionally truncated to one (layer, dim) sub-model.

* Models with a parameter-free pooling whose encoder has a Hugging Face layout (BERT;
  a causal Llama/Qwen2-shaped decoder) become a folder that `transformers` and
  sentence-transformers load as-is: `model.safetensors` + `config.json` with only the
  first `layer` blocks (the model's own two-way weight table), the tokenizer,
  `1_Pooling`, a `2_Dense` identity slice to the first `dim` coordinates (when dim <
  hidden), and `3_Normalize`.
* Everything else (bidirectional decoders, trainable poolers) becomes a plain Flax
  folder: `params.msgpack` (flax.serialization), `tokenizer.json` and `jaxembed.json`
  (the saved-model spec, with the chosen layer and dim), loaded by `jaxembed.load`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.serialization
import jax
import numpy as np
import safetensors.numpy
import tokenizers

from jaxembed.api import EmbeddingModel
from jaxembed.errors import ConfigError
from jaxembed.models import spec as model_spec
from jaxembed.models import weights
from jaxembed.models.embedder import CENTER, COMPONENTS, HEAD, HEAD_NORM
from jaxembed.models.hf import flax_to_hf
from jaxembed.models.loading import ST_LEGACY_POOLING, ST_POOLING_MODES
from jaxembed.models.multivector import PROJECTION, PUNCTUATION
from jaxembed.models.pooling import POOLERS
from jaxembed.version import __version__
from jaxembed.workdir import Workdir

# jaxembed's parameter-free poolings by sentence-transformers' mode name (>= 6) and by
# its boolean key (before 6).
ST_POOLING_MODE = {ours: theirs for theirs, ours in ST_POOLING_MODES.items()
                   if ours in POOLERS}
ST_POOLING = {ST_POOLING_MODES[mode]: key for key, mode in ST_LEGACY_POOLING.items()
              if ST_POOLING_MODES[mode] in POOLERS}
FORMATS = ("auto", "sentence-transformers", "pylate", "flax")


def _check(model: EmbeddingModel, layer, dim):
  width = (model.module.dim if model.multivector
           else model.spec.head_width or model.hidden_size)
  layer = model.num_layers if layer is None else int(layer)
  dim = width if dim is None else int(dim)
  if not 1 <= layer <= model.num_layers:
    raise ConfigError(f"--layer={layer} is out of range; valid: 1..{model.num_layers}")
  if not 1 <= dim <= width:
    raise ConfigError(f"--dim={dim} is out of range; valid: 1..{width}")
  return layer, dim


def sentence_transformers_reason(model: EmbeddingModel) -> str | None:
  """Why `model` cannot be a sentence-transformers folder (None if it can)."""
  if model.multivector:
    return "a multi-vector model gives token vectors: --format=pylate"
  problem = model.encoder_config.hf_export_problem()
  if problem:
    return problem
  if model.pooling not in ST_POOLING:
    return f"pooling {model.pooling!r} has trainable parameters sentence-transformers lacks"
  return None


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def _usual_modes(out: str) -> None:
  """Files and folders readable as the user's umask allows any new file (safetensors
  writes its files 0600, so a shared model folder could not be read by others)."""
  mask = os.umask(0)
  os.umask(mask)
  for root, dirs, files in os.walk(out):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o777 & ~mask)
    for f in files:
      os.chmod(os.path.join(root, f), 0o666 & ~mask)


def _prepare(out: str):
  if os.path.exists(out) and os.listdir(out):
    raise ConfigError(f"--out={out} exists and is not empty; choose a new folder")
  os.makedirs(out, exist_ok=True)


def _write_transformer(model: EmbeddingModel, out: str, layer: int):
  """The encoder truncated to `layer` as sentence-transformers' Transformer module at
  the folder's root (config.json, model.safetensors, tokenizer files); its config."""
  cfg = dataclasses.replace(model.encoder_config, num_layers=layer, scan_layers=False,
                            remat=False)
  params = weights.unscan_layout(jax_to_numpy({"encoder": model.params["encoder"]}),
                                 model.num_layers)
  params = weights.truncate_layers(params, layer)
  safetensors.numpy.save_file(flax_to_hf(params, cfg), os.path.join(out, "model.safetensors"))
  _write_json(os.path.join(out, "config.json"), cfg.to_hf())
  # Without the padding / truncation settings a bundled tokenizer.json may carry: the
  # loader pads per batch and truncates at model_max_length, as jaxembed does.
  tok = tokenizers.Tokenizer.from_str(model.tokenizer.to_json())
  tok.no_padding()
  tok.no_truncation()
  tok.save(os.path.join(out, "tokenizer.json"))
  _write_json(os.path.join(out, "tokenizer_config.json"),
              model.encoder_config.hf_tokenizer_config(
                  model.tokenizer.max_length, model.tokenizer.pad_token,
                  json.loads(tok.to_str())))
  _write_json(os.path.join(out, "sentence_bert_config.json"),
              {"max_seq_length": model.tokenizer.max_length, "do_lower_case": False})
  return cfg


def export_sentence_transformers(model: EmbeddingModel, out: str, *, layer=None,
                                 dim=None, card: dict | None = None) -> str:
  reason = sentence_transformers_reason(model)
  if reason:
    raise ConfigError(f"cannot export as sentence-transformers: {reason}; use "
                      "--format=flax")
  layer, dim = _check(model, layer, dim)
  _prepare(out)
  cfg = _write_transformer(model, out, layer)
  # jaxembed attends to a query instruction but does not pool it (nor the [CLS] before
  # it): sentence-transformers' include_prompt=false drops the same prefix.
  # A model that pools its prompts (loaded from such a folder) keeps doing so.
  prompts = model.prompts
  pooling = {"word_embedding_dimension": cfg.hidden_size,
             "pooling_mode": ST_POOLING_MODE[model.pooling],
             "include_prompt": model.spec.include_prompt or not prompts}
  # One boolean per mode as well: what sentence-transformers before 6 reads.
  pooling.update({key: name == model.pooling for name, key in ST_POOLING.items()})
  _write_json(os.path.join(out, "1_Pooling", "config.json"), pooling)
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  weight, bias = exit_map(model.params, layer, cfg.hidden_size)
  norm = model.spec.head_norm
  # Rows of the affine map before the LayerNorm, which normalises the head's whole
  # output; without one, the Matryoshka prefix alone.
  rows = (model.spec.head_width or cfg.hidden_size) if norm else dim

  def dense(w, b):
    name = f"{len(modules)}_Dense"
    tensors = {"linear.weight": np.ascontiguousarray(w, np.float32)}
    if b is not None and b.any():
      tensors["linear.bias"] = np.ascontiguousarray(b, np.float32)
    _write_json(os.path.join(out, name, "config.json"), {
        "in_features": int(w.shape[1]), "out_features": int(w.shape[0]),
        "bias": "linear.bias" in tensors,
        "activation_function": "torch.nn.modules.linear.Identity"})
    safetensors.numpy.save_file(tensors, os.path.join(out, name, "model.safetensors"))
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": name,
                    "type": "sentence_transformers.models.Dense"})
  if rows < cfg.hidden_size or bias.any() or not np.array_equal(
      weight, np.eye(cfg.hidden_size, dtype=weight.dtype)):
    # The exit's affine map (a centred exit's mean as its bias, its removed directions
    # and a loaded folder's head in its weight), cut to its Matryoshka prefix.
    dense(weight[:rows], bias[:rows])
  if norm:
    name = f"{len(modules)}_LayerNorm"
    _write_json(os.path.join(out, name, "config.json"), {"dimension": rows})
    safetensors.numpy.save_file(
        {"norm.weight": np.asarray(model.params[f"{HEAD_NORM}_scale"], np.float32)[:rows],
         "norm.bias": np.asarray(model.params[f"{HEAD_NORM}_bias"], np.float32)[:rows]},
        os.path.join(out, name, "model.safetensors"))
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": name,
                    "type": "sentence_transformers.models.LayerNorm"})
    if dim < rows:
      dense(np.eye(rows, dtype=np.float32)[:dim], None)
  if model.default_normalize:
    name = f"{len(modules)}_Normalize"
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": name,
                    "type": "sentence_transformers.models.Normalize"})
    os.makedirs(os.path.join(out, name), exist_ok=True)
  _write_json(os.path.join(out, "modules.json"), modules)
  _write_json(os.path.join(out, "config_sentence_transformers.json"),
              {"similarity_fn_name": "cosine", "prompts": prompts,
               "default_prompt_name": model.spec.default_prompt_name})
  _readme(out, model, layer, dim, "sentence-transformers", card)
  _usual_modes(out)
  return out


def pylate_reason(model: EmbeddingModel) -> str | None:
  """Why a multi-vector `model` cannot be a PyLate folder (None if it can)."""
  mv = dict(model.spec.multivector)
  if mv.get("query_reduce", "none") != "none" or mv.get("doc_reduce", "none") != "none":
    return ("its token vectors are reduced in the forward pass (CRISP's k-means, tail "
            "or spacing), which PyLate does not do")
  return model.encoder_config.hf_export_problem()


def export_pylate(model: EmbeddingModel, out: str, *, layer=None, dim=None,
                  card: dict | None = None) -> str:
  """A multi-vector model as a folder PyLate's `models.ColBERT` loads: the encoder
  truncated to `layer` (sentence-transformers' Transformer module), the layer's
  projection cut to `dim` outputs as PyLate's bias-free Dense module, and the markers,
  lengths, expansion and skiplist in config_sentence_transformers.json. PyLate then
  tokenizes, marks, expands and normalises as `encode_multivector` does."""
  if not model.multivector:
    raise ConfigError("--format=pylate writes multi-vector models; this one pools")
  layer, dim = _check(model, layer, dim)
  problem = pylate_reason(model)
  if problem:
    raise ConfigError(f"cannot export as PyLate: {problem}; use --format=flax")
  mv = dict(model.spec.multivector)
  _prepare(out)
  cfg = _write_transformer(model, out, layer)
  kernel = np.asarray(model.params[PROJECTION])[layer - 1][:, :dim]
  _write_json(os.path.join(out, "1_Dense", "config.json"), {
      "in_features": cfg.hidden_size, "out_features": dim, "bias": False,
      "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False})
  safetensors.numpy.save_file({"linear.weight": np.ascontiguousarray(kernel.T, np.float32)},
                              os.path.join(out, "1_Dense", "model.safetensors"))
  _write_json(os.path.join(out, "modules.json"), [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}])
  token = tokenizers.Tokenizer.from_str(model.tokenizer.to_json()).id_to_token
  _write_json(os.path.join(out, "config_sentence_transformers.json"), {
      "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
      "similarity_fn_name": "MaxSim",
      "query_prefix": token(mv["query_prefix_id"]),
      "document_prefix": token(mv["document_prefix_id"]),
      "query_length": mv["query_length"],
      # PyLate tokenizes a document to document_length - 1 tokens, then the marker.
      "document_length": model.tokenizer.max_length + 1,
      "attend_to_expansion_tokens": bool(mv["attend_to_expansion"]),
      "skiplist_words": list(PUNCTUATION) if mv["skip_ids"] else [],
      "do_query_expansion": bool(mv["expand_queries"])})
  _readme(out, model, layer, dim, "pylate", card)
  _usual_modes(out)
  return out


def export_flax(model: EmbeddingModel, out: str, *, layer=None, dim=None,
                card: dict | None = None) -> str:
  layer, dim = _check(model, layer, dim)
  _prepare(out)
  with open(os.path.join(out, "params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(jax_to_numpy(model.params)))
  with open(os.path.join(out, "tokenizer.json"), "w") as f:
    f.write(model.tokenizer.to_json())
  spec = dataclasses.replace(model.spec, layer=layer, dim=dim,
                             max_seq_length=model.tokenizer.max_length,
                             padding_side=model.tokenizer.padding_side)
  model_spec.write(os.path.join(out, model_spec.FILENAME), spec)
  _readme(out, model, layer, dim, "flax", card)
  _usual_modes(out)
  return out


def export(model: EmbeddingModel, out: str, *, layer=None, dim=None,
           format: str = "auto", card: dict | None = None) -> str:
  """format: auto (sentence-transformers for a pooling model and PyLate for a
  multi-vector one when possible, else flax) | sentence-transformers | pylate | flax.
  `card` (`workdir_card(workdir)`: the run's config and evaluation grid) goes into the
  folder's README.md, the model card."""
  if format not in FORMATS:
    raise ConfigError(f"--format={format!r}; valid values: {list(FORMATS)}")
  if format == "pylate" or (format == "auto" and model.multivector
                            and not pylate_reason(model)):
    return export_pylate(model, out, layer=layer, dim=dim, card=card)
  if format == "flax" or (format == "auto" and sentence_transformers_reason(model)):
    return export_flax(model, out, layer=layer, dim=dim, card=card)
  return export_sentence_transformers(model, out, layer=layer, dim=dim, card=card)


def exit_map(params, layer: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
  """(W [hidden, hidden], b [hidden]) float32 with W v + b = layer `layer`'s exit of a
  pooled vector v: the identity and zero, or with centred exits P (v - mean) where P
  = I - U^T U removes the exit's components U (Embedder.exit_components), then the
  head's linear map K^T when the model has one (Embedder.head)."""
  weight = np.eye(hidden, dtype=np.float64)
  centre = np.zeros(hidden, np.float64)
  if CENTER in params:
    centre = np.asarray(jax_to_numpy(params[CENTER]), np.float64)[layer - 1]
  if COMPONENTS in params:
    u = np.asarray(jax_to_numpy(params[COMPONENTS]), np.float64)[layer - 1]
    weight = weight - u.T @ u
  bias = -(weight @ centre)
  if HEAD in params:       # a loaded folder's Dense chain, applied after the exit
    head = np.asarray(jax_to_numpy(params[HEAD]), np.float64).T
    weight, bias = head @ weight, head @ bias
  return weight.astype(np.float32), bias.astype(np.float32)


def jax_to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def workdir_card(path: str) -> dict | None:
  """What a model card says of a training run: its config and its evaluation grid
  before and after training (None when `path` is not a workdir)."""
  wd = Workdir(path)
  if not (wd.exists(Workdir.CONFIG) and wd.exists(Workdir.CHECKPOINTS)):
    return None                       # a model folder (its config.json is the HF one)
  card = {"source": path, "config": wd.read_json(Workdir.CONFIG)}
  if wd.exists(Workdir.METRICS):
    card["grid"] = wd.read_json(Workdir.METRICS)
  return card


def _public(value):
  """`value` (a config, a path) with each absolute local path cut to its last part:
  what a model card may say without telling the writer's folders."""
  if isinstance(value, dict):
    return {k: _public(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_public(v) for v in value]
  if isinstance(value, str) and "://" not in value and (
      os.path.isabs(value) or value.startswith("~")):
    return ".../" + os.path.basename(os.path.normpath(value))
  return value


def _cell_table(grid: dict, layer: int, dim: int) -> str:
  """The exported cell's scores, before and after training, as a Markdown table."""
  def row_of(rows):
    return next((r for r in rows or [] if r.get("layer") == layer and r.get("dim") == dim),
                None)
  before, after = row_of(grid.get("before")), row_of(grid.get("after"))
  if after is None:
    return ("This (layer, dim) cell was not in the run's evaluation grid "
            "(`eval.layers` x `eval.dims`).\n")
  lines = ["| metric | before training | after training |", "|---|---|---|"]
  for name, value in after.items():
    if name in ("layer", "dim"):
      continue
    old = "–" if before is None or name not in before else f"{100 * before[name]:.1f}"
    lines.append(f"| {name} | {old} | {100 * value:.1f} |")
  return "\n".join(lines) + "\n"


def _readme(out: str, model: EmbeddingModel, layer: int, dim: int, kind: str,
            card: dict | None):
  """The folder's README.md: a model card (what the folder is, how to load it, its
  prompts, the cell's scores and the training config when known)."""
  prompts = model.prompts
  # A model card travels: no path of the machine that wrote it (a folder's name only).
  here = os.path.basename(os.path.normpath(out))
  source = f"the run `{_public(card['source'])}`" if card else ""
  parts = [f"# jaxembed model: layer {layer} of {model.num_layers}, dim {dim} of "
           f"{model.hidden_size}\n",
           f"Exported by jaxembed {__version__}" + (f" from {source}." if card else "."),
           (f"One vector per token (late interaction), L2-normalised, scored by MaxSim, "
            f"at most {model.tokenizer.max_length + 1} document tokens.\n"
            if kind == "pylate" else
            f"Pooling `{model.pooling}`, vectors "
            f"{'L2-normalised' if model.default_normalize else 'not normalised'}, cosine "
            f"similarity, at most {model.tokenizer.max_length} tokens.\n"), "## Use\n"]
  query = "query" in prompts
  if kind == "pylate":
    parts.append("```python\nfrom pylate import models\n"
                 f"model = models.ColBERT({here!r})\n"
                 "queries = model.encode(texts, is_query=True)   # [tokens, dim] each\n"
                 "documents = model.encode(texts, is_query=False)\n```\n")
  elif kind == "sentence-transformers":
    parts.append("```python\nfrom sentence_transformers import SentenceTransformer\n"
                 f"model = SentenceTransformer({here!r})\n"
                 + ("queries = model.encode(texts, prompt_name='query')\n" if query else "")
                 + "vectors = model.encode(texts)\n```\n")
  else:
    parts.append(f"```python\nimport jaxembed\nmodel = jaxembed.load({here!r})\n"
                 + ("queries = model.encode_query(texts)\n" if query else "")
                 + "vectors = model.encode(texts)\n```\n")
  if prompts:
    pooled = ("pooled with the text" if model.spec.include_prompt
              else "attended to but not pooled")
    parts.append("## Prompts\n\n" + "".join(f"- `{name}`: {text!r}\n"
                                            for name, text in sorted(prompts.items()))
                 + f"\nA prompt is prepended to the text and {pooled}.\n")
  if card and card.get("grid"):
    parts += ["## Evaluation (jaxembed's grid, x100)\n", _cell_table(card["grid"], layer, dim)]
  if card:
    parts += ["## Training config\n", "```json\n" + json.dumps(_public(card["config"]),
                                                              indent=1) + "\n```\n"]
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write("\n".join(parts))
