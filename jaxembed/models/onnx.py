"""BERT weights from an ONNX file (as exported by sentence-transformers / optimum).

Needs the optional `onnx` package, imported when a file is read.
"""

from __future__ import annotations

from jaxembed.errors import ModelLoadError
from jaxembed.models.bert import BertConfig
from jaxembed.models.hf import bert_hf_to_flax


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
                         "pip install 'jaxembed[onnx]'") from e
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
  return cfg, bert_hf_to_flax(tensors, cfg, source=path)


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
  from onnx import numpy_helper  # optional dependency
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
