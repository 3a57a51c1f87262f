r"""Embeds a corpus of any size into one array (`jaxembed encode`, `python -m
experiments.encode`).

  jaxembed encode --model=runs/default --input=corpus.txt --out=emb/ [--layer=4 --dim=128]
  jaxembed encode --model=weights:all-mpnet-base-v2 --input=docs.jsonl --text_field=body \
      --out=emb/ --prompt_name=document

The input is a text file (one text per line) or JSONL (`--text_field` names the text).
It is read in shards of `--shard_size` texts, streamed (memory does not grow with the
corpus); each shard is encoded (its texts bucketed by token length, the batch split
over every local device) and written atomically to `OUT/shards/`, so a rerun after a
crash skips the finished shards and gives the same result. With several processes
(`jax.distributed`: `--coordinator_address --num_processes --process_id` as for
`train`, or `--multihost`), process i encodes shards i, i + n, ... into the shared
OUT; process 0 then joins them. The result: `numpy.load("OUT/embeddings.npy", mmap_mode="r")`, float32 rows in
input order, and `OUT/meta.json` (model, cell, dtype, count). `--index=flat|ivf_pq|binary`
also writes a faiss index `OUT/index.faiss` (needs faiss: `pip install jaxembed[faiss]`).
"""

from __future__ import annotations

import sys

from absl import app, flags

from jaxembed import hostmem
from jaxembed.cli import define_distributed_flags, initialize_distributed

_MODEL = None
_INPUT = None
_FIELD = None
_OUT = None
_LAYER = None
_DIM = None
_PROMPT = None
_BATCH = None
_SHARD = None
_INDEX = None
_DEBUG = None


def define_flags() -> None:
  """Defines this command's flags, once: at import they would clash with the
  other commands' (every module of the package imports together)."""
  global _MODEL, _INPUT, _FIELD, _OUT, _LAYER, _DIM, _PROMPT, _BATCH, _SHARD, _INDEX, _DEBUG
  if _MODEL is not None:
    return
  _MODEL = flags.DEFINE_string("model", None, "a workdir or anything jaxembed.load reads")
  _INPUT = flags.DEFINE_string("input", None, "texts: a .txt file (one per line) or .jsonl")
  _FIELD = flags.DEFINE_string("text_field", "text", "the JSONL field holding the text")
  _OUT = flags.DEFINE_string("out", None, "the output folder (created; reused by a rerun)")
  _LAYER = flags.DEFINE_integer("layer", None, "the sub-model's layer (default: the model's)")
  _DIM = flags.DEFINE_integer("dim", None, "the sub-model's dims (default: the model's)")
  _PROMPT = flags.DEFINE_string("prompt_name", None, "a prompt of the model, e.g. document")
  _BATCH = flags.DEFINE_integer("batch_size", 64, "texts per forward pass")
  _SHARD = flags.DEFINE_integer("shard_size", 16384, "texts per shard file (the restart unit)")
  _INDEX = flags.DEFINE_enum("index", None, ["flat", "ivf_pq", "binary"],
                             "also build a faiss index beside the embeddings")
  _DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of a failure, not one line.")
  define_distributed_flags()
  flags.mark_flags_as_required(["model", "input", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxembed.corpus import encode_corpus
  from jaxembed.errors import JaxembedError
  initialize_distributed()
  try:
    meta = encode_corpus(_MODEL.value, _INPUT.value, _OUT.value, text_field=_FIELD.value,
                         layer=_LAYER.value, dim=_DIM.value, prompt_name=_PROMPT.value,
                         batch_size=_BATCH.value, shard_size=_SHARD.value,
                         index=_INDEX.value)
  except JaxembedError as e:
    if _DEBUG.value:
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(f"wrote {meta['count']} x {meta['dim']} to {_OUT.value}/embeddings.npy")


def run() -> None:
  hostmem.reexec_if_needed()
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
