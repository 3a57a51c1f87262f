"""Cost of training the whole 2D Matryoshka grid against plain InfoNCE, per step.

  python benchmarks/grid_overhead.py [--steps=8] [--config=arm=pairs]

(--config: an argument of configs/ood_ablation.py.)

The default job's workload (all-MiniLM-L6-v2, global batch 32, 32 tokens): the same
jitted train step, once with the full grid (layers 1..6 x dims 32..384, 30 cells) and
once with InfoNCE on the full model alone, timed on the same batches, interleaved so
that both see the same machine state. The grid reads every layer from the one encoder
pass and gets all dims of a layer from cumulative per-chunk dot products, so its
extra cost is a few small [B, B] matrices. The last line is the ratio of median step
times.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import tiny  # noqa: E402
from configs import ood_ablation  # noqa: E402
from jaxembed import sharding as shd, train  # noqa: E402


def build(config):
  run = train.setup(config, "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  return run, train.new_state(run, shardings), train.compile_train_step(run, shardings)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--config", default="arm=pairs",
                      help="configs/ood_ablation.py's argument, e.g. smoke,arm=pairs")
  args = parser.parse_args()
  grid_cfg = tiny.config(ood_ablation.get_config(args.config))
  plain_cfg = tiny.config(ood_ablation.get_config(args.config))
  plain_cfg.loss.matryoshka.mode = "none"
  for cfg in (grid_cfg, plain_cfg):
    cfg.model.dtype, cfg.eval.ood = "", ()           # float32, as measured in benchmarks/README.md
  runs = {}
  for name, cfg in (("grid", grid_cfg), ("plain", plain_cfg)):
    run, state, step = build(cfg)
    runs[name] = [run, state, step]
  data = iter(runs["grid"][0].dataset)
  batches = [next(data) for _ in range(args.steps + 1)]
  times = {"grid": [], "plain": []}
  for i, local in enumerate(batches):
    for name in ("grid", "plain") if i % 2 else ("plain", "grid"):
      run, state, step = runs[name]
      batch = shd.host_batch_to_global(run.mesh, local)
      t0 = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics["loss"])
      if i:  # the first step of each includes compilation
        times[name].append(time.perf_counter() - t0)
      runs[name][1] = state
  grid_t, plain_t = statistics.median(times["grid"]), statistics.median(times["plain"])
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"batch {grid_cfg.train.batch_size}, seq {grid_cfg.data.seq_len}, "
        f"{args.steps} timed steps each")
  n_cells = len(grid_cfg.loss.matryoshka.layers) * len(grid_cfg.loss.matryoshka.dims)
  print(f"grid ({n_cells} cells): median {grid_t:.3f}s   "
        f"plain (full model only): median {plain_t:.3f}s")
  print(f"grid/plain step time ratio: {grid_t / plain_t:.3f}")


if __name__ == "__main__":
  main()
