"""Evaluating a run's model on its tasks, with the parameters where they live.

One path for every model of the embedder interface: documents go through
`encode_documents`, queries through `encode_queries` (needed when the model is
asymmetric, or for a query instruction); zero-shot image tasks encode their images as
queries and their class prompts as documents.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import time

import jax
import numpy as np

from jaxembed import sharding as shd
from jaxembed.batch_encode import BatchEncoder, TokenEncoder
from jaxembed.evals import grid as grid_eval, late_interaction
from jaxembed.evals.tasks import ZeroShotTask
from jaxembed.version import __version__

DEFAULT_EVAL_CACHE = "~/.cache/jaxembed/eval"


def _text_encoder(run, params, method: str):
  # One pass up to the deepest layer the grid reads (early exit), every cell from it.
  model = run.model.up_to(max(run.config.eval.layers))
  encoder = BatchEncoder(model, params, run.eval_tokenizer,
                         layers=model.output_layers, width=model.output_width,
                         method=method, rules=run.rules)
  return functools.partial(encoder, batch_size=run.config.eval.batch_size)


def _image_encoder(run, params):
  """images [n, H, W, C] -> numpy [n, layers, width] through `encode_queries`, the
  inputs replicated and the output replicated."""
  rep = shd.replicated(run.mesh)
  fn = shd.mesh_jit(lambda p, x: run.model.apply({"params": p}, x, method="encode_queries"),
                    run.mesh, run.rules, out_shardings=rep)
  batch_size = run.config.eval.batch_size

  def encode(images):
    out = []
    for start in range(0, len(images), batch_size):
      x = np.asarray(images[start:start + batch_size], np.float32)
      rows = len(x)
      x = np.pad(x, ((0, batch_size - rows),) + ((0, 0),) * (x.ndim - 1))
      out.append(np.asarray(fn(params, shd.host_to_global({"pixels": x}, rep))
                            .addressable_data(0))[:rows])
    return np.concatenate(out)
  return encode


def cache_key(run, params) -> str | None:
  """A content key of an evaluation: the parameters' bytes, every task's content, the
  model's description and the evaluation settings, and jaxembed's version. None where
  the parameters are not all on this process (several hosts)."""
  if jax.process_count() > 1:
    return None
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda x: jax.tree_util.keystr(x[0])):
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(pickle.dumps([(type(t).__name__, t) for t in run.eval_tasks], protocol=4))
  h.update(run.spec.to_json().encode())
  h.update(repr(run.model).encode())
  h.update(json.dumps(run.config.eval.to_dict(), sort_keys=True, default=str).encode())
  h.update(json.dumps(run.view.lora_scale).encode())
  h.update(__version__.encode())
  return h.hexdigest()


def cached_evaluate(run, params, label: str) -> list[dict]:
  """`evaluate`, its rows kept under `cache_key` in `$JAXEMBED_EVAL_CACHE` (default
  ~/.cache/jaxembed/eval; 'off' turns it off): the 'before' grid of an unchanged
  pretrained model is computed once, whichever run asks for it."""
  where = os.path.expanduser(os.environ.get("JAXEMBED_EVAL_CACHE", DEFAULT_EVAL_CACHE))
  key = None if where.strip().lower() in ("off", "0", "") else cache_key(run, params)
  path = key and os.path.join(where, f"{key}.json")
  if path and os.path.exists(path):
    try:
      with open(path) as f:
        rows = json.load(f)
      logging.info("eval (%s): the same model and evaluation were scored before; "
                   "rows read from %s", label, path)
      return rows
    except (OSError, ValueError):
      pass                      # a damaged entry: evaluated again and rewritten
  rows = evaluate(run, params, label)
  if path:
    try:
      os.makedirs(where, exist_ok=True)
      with open(path + f".{os.getpid()}.tmp", "w") as f:
        json.dump(rows, f)
      os.replace(path + f".{os.getpid()}.tmp", path)
    except OSError as e:
      logging.warning("eval cache %s not written: %s", where, e)
  return rows


def _evaluate_multivector(run, params, label: str) -> list[dict]:
  """A multi-vector model's grid: exhaustive MaxSim on the retrieval tasks."""
  model = run.model.up_to(max(run.config.eval.layers))
  batch = run.config.eval.batch_size

  def encoder(method, what):
    encode = TokenEncoder(model, params, run.eval_tokenizer,
                                           method=method, rules=run.rules)
    return functools.partial(encode, batch_size=batch, progress=f"eval {what} ({label})")
  return late_interaction.evaluate_grid(
      encoder("encode_queries", "queries"), encoder("encode_documents", "documents"),
      run.eval_tasks, run.config.eval.layers, run.config.eval.dims)


def evaluate(run, params, label: str) -> list[dict]:
  """One row per (layer, dim) cell of the eval grid: {'layer', 'dim', '<task>/<metric>'}."""
  params = run.view.merged(params)
  t0 = time.time()
  e = run.config.eval
  if run.model.multivector:
    rows = _evaluate_multivector(run, params, label)
    logging.info("eval (%s) took %.1fs", label, time.time() - t0)
    return rows
  documents = _text_encoder(run, params, "encode_documents")
  zero_shot = [t for t in run.eval_tasks if isinstance(t, ZeroShotTask)]
  grid_tasks = [t for t in run.eval_tasks if not isinstance(t, ZeroShotTask)]
  rows = None
  if grid_tasks:
    instruction = run.config.data.query_instruction
    queries = None
    if instruction or not run.model.symmetric:
      queries = functools.partial(_text_encoder(run, params, "encode_queries"),
                                  instruction=instruction)
    rows = grid_eval.evaluate_grid(
        functools.partial(documents, progress=f"eval ({label})"), grid_tasks, e.layers,
        e.dims, encode_queries=queries)
  if zero_shot:
    rows = rows or [dict(layer=int(l), dim=int(d)) for l in e.layers for d in e.dims]
    images = _image_encoder(run, params)
    for task in zero_shot:
      image_vecs, prompt_vecs = images(task.images), documents(task.prompts)
      for row in rows:
        i, dim = row["layer"] - 1, row["dim"]
        row.update({f"{task.name}/{k}": v for k, v in task.score(
            image_vecs[:, i, :dim], prompt_vecs[:, i, :dim]).items()})
  logging.info("eval (%s) took %.1fs", label, time.time() - t0)
  return rows
