"""Training and encoding throughput on an accelerator, with model FLOP utilisation.

  bash benchmarks/gpu.sh              # on a GPU: BERT-base shape, seq 128, bfloat16
  bash benchmarks/gpu.sh --dry-run    # anywhere: a tiny shape, seconds (a test runs it)

A BERT-base-shaped encoder (12 layers, width 768, 12 heads, FFN 3072; random weights,
the MiniLM vocabulary), contrastive training (InfoNCE over the 2D Matryoshka grid of
layers {4, 8, 12} x dims {64, 256, 768}, dropout, AdamW) in `--dtype` (bfloat16:
bfloat16 matmuls, float32 parameters and accumulation; attention dropout off, hidden
dropout 0.1) at sequence length 128, with
the largest batch (a power of two) whose step compiles and runs. The attention is
cuDNN's fused kernel where the platform has one (`model.attention`), else XLA's.

Prints examples/s and MFU: the compiled step's FLOPs (XLA's cost analysis) per second
over the device's peak bfloat16 rate (a table of known devices; `--peak-tflops`
overrides), and the encode rate (sentences/s, forward only, no dropout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import common  # noqa: E402
from jaxembed import sharding as shd, train  # noqa: E402

# Dense bfloat16 peak per device, TFLOP/s (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0,
                    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5p": 459.0,
                    "TPU v6 lite": 918.0}


def peak_tflops(kind: str) -> float | None:
  for name, peak in PEAK_BF16_TFLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def make_config(args, batch: int, data_file: str):
  c = common.base_config()
  c.model.init = "random"
  if args.dry_run:
    shape = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
    layers, dims = (1, 2), (8, 32)
  else:
    shape = dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072)
    layers, dims = (4, 8, 12), (64, 256, 768)
  c.model.bert_overrides = common.ml_collections.ConfigDict(dict(
      shape, dtype=args.dtype, max_position_embeddings=512))
  c.model.bert_overrides.attention = args.attention
  # Attention dropout off (as most recent embedders train), so the fused kernel applies.
  c.model.bert_overrides.attention_dropout = 0.0
  c.data.source = "file"
  c.data.train_file = data_file
  c.data.tfds_dir = os.path.dirname(data_file)    # nothing left in the user's cache
  c.data.seq_len = args.seq_len
  c.loss.matryoshka.layers, c.loss.matryoshka.dims = layers, dims
  c.eval.layers, c.eval.dims = layers, dims
  c.eval.wordnet_queries = 0
  c.train.batch_size = batch
  c.optim.warmup_steps = 1
  c.train.steps = 10
  return c


def synthetic_batch(run, batch: int, seq: int, rng):
  def side():
    ids = rng.integers(2000, 30000, (batch, seq)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
  return shd.host_batch_to_global(run.mesh, {"anchor": side(), "positive": side()})


def try_batch(args, batch: int, data_file: str):
  """(examples/s, step FLOPs, run, state) for one batch size, or None if it does not fit."""
  rng = np.random.default_rng(0)
  run = train.setup(make_config(args, batch, data_file), "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  try:
    state = train.new_state(run, shardings)
    step = train.compile_train_step(run, shardings)
    batches = [synthetic_batch(run, batch, args.seq_len, rng) for _ in range(2)]
    compiled = step.lower(state, batches[0]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(args.steps):
      state, m = step(state, batches[i % 2])
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / args.steps
  except Exception as e:  # out of memory (XlaRuntimeError RESOURCE_EXHAUSTED)
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      return None
    raise
  return batch / dt, (cost or {}).get("flops"), dt, run, state


def encode_rate(run, state, batch: int, seq: int, steps: int) -> float:
  model, params = run.model, state.params
  fn = shd.mesh_jit(lambda p, x: model.apply({"params": p}, x, method="encode_documents"),
                    run.mesh, run.rules)
  rng = np.random.default_rng(1)
  x = synthetic_batch(run, batch, seq, rng)["anchor"]
  jax.block_until_ready(fn(params, x))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(params, x)
  jax.block_until_ready(out)
  return batch * steps / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dry-run", action="store_true", help="tiny shape, any device")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--attention", default="auto", help="auto | xla | cudnn")
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--max-batch", type=int, default=4096)
  parser.add_argument("--peak-tflops", type=float, default=None)
  args = parser.parse_args()
  if args.dry_run:
    args.seq_len, args.steps, args.max_batch = 16, 2, 8
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  peak = args.peak_tflops or peak_tflops(kind)
  with tempfile.TemporaryDirectory() as tmp:
    data_file = os.path.join(tmp, "pairs.jsonl")
    with open(data_file, "w") as f:
      for i in range(64):
        f.write(json.dumps({"anchor": f"query {i}", "positive": f"document {i}"}) + "\n")
    best, batch = None, 8 if args.dry_run else 32
    while batch <= args.max_batch:
      result = try_batch(args, batch, data_file)
      if result is None:
        break
      best = (batch, *result)
      print(f"batch {batch}: {result[0]:.1f} examples/s", flush=True)
      batch *= 2
    if best is None:
      sys.exit("no batch size fits")
    batch, rate, flops, dt, run, state = best
    enc = encode_rate(run, state, 2 * batch, args.seq_len, args.steps)
  print(f"device: {jax.device_count()} x {kind}; dtype {args.dtype}; seq {args.seq_len}; "
        f"attention {run.text_config.attention}")
  print(f"train: batch {batch} pairs, {rate:.1f} examples/s, step {dt * 1e3:.1f} ms")
  if flops:
    achieved = flops / dt / 1e12
    mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a (unknown peak)"
    print(f"train: {flops / 1e9:.4g} GFLOP/step, {achieved:.4g} TFLOP/s, MFU {mfu}")
  print(f"encode: {enc:.1f} sentences/s (batch {2 * batch}, seq {args.seq_len})")


if __name__ == "__main__":
  main()
