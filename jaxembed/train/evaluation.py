"""Evaluating a run's model on its tasks, with the parameters where they live.

One path for every model of the embedder interface: documents go through
`encode_documents`, queries through `encode_queries` (needed when the model is
asymmetric, or for a query instruction); zero-shot image tasks encode their images as
queries and their class prompts as documents.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from jaxembed import sharding as shd
from jaxembed.api import BatchEncoder, TokenEncoder
from jaxembed.evals import grid as grid_eval, late_interaction
from jaxembed.evals.tasks import ZeroShotTask


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
