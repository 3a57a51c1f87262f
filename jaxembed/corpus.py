"""Embedding a corpus of any size (`jaxembed encode`): streamed in shards written
atomically, resumable, the batch split over every local device, one array at the end.

  OUT/settings.json     what the folder is being made with (a rerun must match it)
  OUT/shards/<k>.npy    shard k's vectors (texts k*S .. (k+1)*S - 1), while running
  OUT/embeddings.npy    [count, dim] float32, rows in input order (then shards go)
  OUT/meta.json         model, cell, dtype, count, normalised; written last
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Iterator

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jaxembed import sharding as shd
from jaxembed.api import EmbeddingModel
from jaxembed.errors import ConfigError, DataError
from jaxembed.loaders import load
from jaxembed.workdir import file_fingerprint

INDEXES = ("flat", "ivf_pq", "binary")
IVF_PQ_MIN = 10000          # vectors to train IVF-PQ's coarse and product quantisers on


def read_texts(path: str, text_field: str = "text") -> Iterator[str]:
  """The texts of a .jsonl file (its `text_field`) or of any other text file (one per
  line), one at a time; a bad line is a DataError naming the file and line."""
  jsonl = path.endswith((".jsonl", ".json"))
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.rstrip("\n").rstrip("\r")
        if not jsonl:
          yield line
          continue
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{number}: not JSON ({e})") from e
        text = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
          has = sorted(row)[:8] if isinstance(row, dict) else type(row).__name__
          raise DataError(f"{path}:{number}: no string field {text_field!r} (set "
                          f"--text_field; the line has {has})")
        yield text
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e})") from e
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror})") from e


def _shards(path: str, text_field: str, size: int) -> Iterator[tuple[int, list[str]]]:
  shard, k = [], 0
  for text in read_texts(path, text_field):
    shard.append(text)
    if len(shard) == size:
      yield k, shard
      shard, k = [], k + 1
  if shard:
    yield k, shard


def on_local_devices(model: EmbeddingModel) -> EmbeddingModel:
  """The model replicated over this process's devices, so each batch is split over
  them (data parallel); itself with one device."""
  devices = jax.local_devices()
  if len(devices) == 1:
    return model
  mesh = shd.make_mesh({"data": -1}, devices)
  params = jax.device_put(model.params, shd.replicated(mesh))
  return EmbeddingModel(model.spec, params, model.tokenizer)


def _write_atomic(path: str, write) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _save_npy(path: str, array: np.ndarray) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, array)
  _write_atomic(path, write)


def _write_json(path: str, obj) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1)
      f.write("\n")
  _write_atomic(path, write)


def encode_corpus(model_path: str, input_path: str, out: str, *, text_field: str = "text",
                  layer: int | None = None, dim: int | None = None,
                  prompt_name: str | None = None, batch_size: int = 64,
                  shard_size: int = 16384, index: str | None = None,
                  progress: bool = True) -> dict:
  """Embeds every text of `input_path` into OUT/embeddings.npy (see the module doc);
  returns the meta.json record. A rerun with the same settings resumes (finished
  shards are kept) or, when the folder is complete, does nothing."""
  if shard_size < 1 or batch_size < 1:
    raise ConfigError(f"--shard_size={shard_size} and --batch_size={batch_size} must be >= 1")
  if index is not None and index not in INDEXES:
    raise ConfigError(f"--index={index!r}; valid: {list(INDEXES)}")
  if not os.path.isfile(input_path):
    raise DataError(f"--input={input_path}: no such file")
  settings = {"model": model_path, "input": os.path.abspath(input_path),
              "input_fingerprint": file_fingerprint(input_path), "text_field": text_field,
              "layer": layer, "dim": dim, "prompt_name": prompt_name,
              "shard_size": shard_size}
  os.makedirs(os.path.join(out, "shards"), exist_ok=True)
  settings_file, meta_file = (os.path.join(out, n) for n in ("settings.json", "meta.json"))
  if os.path.isfile(settings_file):
    with open(settings_file) as f:
      before = json.load(f)
    changed = sorted(k for k in settings if before.get(k) != settings[k])
    if changed:
      raise ConfigError(f"--out={out} holds the work of another run ({', '.join(changed)} "
                        "differ); choose a new folder or repeat that run's flags")
  elif jax.process_index() == 0:
    _write_json(settings_file, settings)
  if os.path.isfile(meta_file):
    with open(meta_file) as f:
      return json.load(f)                    # complete: nothing to do

  model = on_local_devices(load(model_path))
  layer = layer or model.default_layer or model.num_layers
  dim = dim or model.default_dim or model.hidden_size
  model.encode(["probe"], layer=layer, dim=dim, prompt_name=prompt_name)   # checks them
  count = sum(1 for _ in read_texts(input_path, text_field))
  if index == "ivf_pq" and count < IVF_PQ_MIN:
    raise ConfigError(f"--index=ivf_pq trains its quantisers on the vectors: {count} are "
                      f"too few ({IVF_PQ_MIN:,} or more); use --index=flat")
  n_shards = math.ceil(count / shard_size)
  mine = [k for k in range(n_shards) if k % jax.process_count() == jax.process_index()]
  shard_file = lambda k: os.path.join(out, "shards", f"{k:06d}.npy")
  todo = [k for k in mine if not os.path.isfile(shard_file(k))]
  todo_texts = sum(min(shard_size, count - k * shard_size) for k in todo)
  bar = tqdm.tqdm(total=todo_texts, desc="encode", unit="text", file=sys.stderr,
                  disable=not progress, mininterval=1.0, dynamic_ncols=True)
  wanted = set(todo)
  for k, texts in _shards(input_path, text_field, shard_size):
    if k not in wanted:
      continue
    vecs = model.encode(texts, layer=layer, dim=dim, prompt_name=prompt_name,
                        batch_size=batch_size)
    _save_npy(shard_file(k), np.asarray(vecs, np.float32))
    bar.update(len(texts))
  bar.close()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxembed encode: every shard written")
  meta = {"model": model_path, "layer": layer, "dim": dim, "dtype": "float32",
          "count": count, "normalized": bool(model.default_normalize),
          "prompt_name": prompt_name, "input": os.path.abspath(input_path)}
  if jax.process_index() != 0:
    return meta
  _join(out, [shard_file(k) for k in range(n_shards)], count, dim)
  if index:
    _build_index(out, index, dim)
  _write_json(meta_file, meta)
  for k in range(n_shards):
    os.remove(shard_file(k))
  return meta


def _join(out: str, files: list[str], count: int, dim: int) -> None:
  """The shards copied one by one into OUT/embeddings.npy (memory: one shard)."""
  def write(tmp):
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
    row = 0
    for path in files:
      part = np.load(path)
      array[row:row + len(part)] = part
      row += len(part)
    if row != count:
      raise DataError(f"{out}/shards hold {row} rows, the input {count} texts")
    array.flush()
    del array
  _write_atomic(os.path.join(out, "embeddings.npy"), write)


def _build_index(out: str, kind: str, dim: int) -> None:
  try:
    import faiss
  except ImportError as e:
    raise ConfigError("--index needs faiss: pip install 'jaxembed[faiss]'") from e
  vecs = np.load(os.path.join(out, "embeddings.npy"), mmap_mode="r")
  n = len(vecs)
  if kind == "binary":
    index = faiss.IndexBinaryFlat(dim - dim % 8)
    add = lambda v: index.add(np.packbits(v[:, :dim - dim % 8] > 0, axis=-1))
  elif kind == "flat":
    index = faiss.IndexFlatIP(dim)
    add = lambda v: index.add(np.ascontiguousarray(v, np.float32))
  else:
    nlist = max(1, min(4096, int(4 * math.sqrt(n))))
    m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0 and m <= dim)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8,
                             faiss.METRIC_INNER_PRODUCT)
    sample = np.asarray(vecs[np.random.default_rng(0).permutation(n)[:max(nlist * 39, 256)]])
    index.train(np.ascontiguousarray(sample, np.float32))
    add = lambda v: index.add(np.ascontiguousarray(v, np.float32))
  for start in range(0, n, 65536):
    add(np.asarray(vecs[start:start + 65536]))
  write = faiss.write_index_binary if kind == "binary" else faiss.write_index
  _write_atomic(os.path.join(out, "index.faiss"), lambda tmp: write(index, tmp))
