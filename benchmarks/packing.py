"""Packed against padded training batches, on the default job's own step and data.

  python benchmarks/packing.py [--rounds=5] [--steps=8] [--pack_length=64]
                               [--pack_granule=8]

The default job (`configs/minilm_wordnet_2d.py`: bfloat16 matmuls, the frozen
teacher's forward pass, the 30-cell grid, WordNet and FOLDOC pairs at seq_len 32)
trains on short texts: most of each padded batch is padding. This runs the same
batches through the step padded (data.pack_length=0) and packed, both compiled in one
process, in `--rounds` interleaved rounds of `--steps` steps each, and prints the
median step time of each, their ratio (packed / padded) and how much of each layout
is real tokens. Every packed shape met is compiled before timing; the compile time of
each shape (its first step) is printed too, since each shape a run meets costs one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import tiny  # noqa: E402
from benchmarks.vs_sentence_transformers import cpu_name  # noqa: E402
from configs import minilm_wordnet_2d  # noqa: E402
from jaxembed import hostmem, sharding as shd, train  # noqa: E402


def setup(pack_length: int, granule: int):
  c = tiny.config(minilm_wordnet_2d.get_config())
  c.data.pack_length = pack_length
  c.data.pack_granule = granule
  run = train.setup(c, "/nonexistent-unused", devices=jax.devices()[:1])
  _, shardings = train.abstract_state(run)
  return run, train.new_state(run, shardings), train.compile_train_step(run, shardings)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--pack_length", type=int, default=64)
  p.add_argument("--pack_granule", type=int, default=8)
  args = p.parse_args()
  n = args.rounds * args.steps
  arms = {}
  for name, length in (("padded", 0), ("packed", args.pack_length)):
    run, state, step = setup(length, args.pack_granule)
    it = iter(run.dataset)
    batches = [next(it) for _ in range(n)]
    shapes = {}
    for b in batches:          # one batch of every shape, to compile before timing
      key = b["packed"]["input_ids"].shape if "packed" in b else None
      shapes.setdefault(key, b)
    compiles = []
    for b in shapes.values():
      start = time.perf_counter()
      state, m = step(state, shd.host_batch_to_global(run.mesh, b))
      jax.block_until_ready(m)
      compiles.append(time.perf_counter() - start)
    real = sum(int(b["anchor"]["attention_mask"].sum() + b["positive"]["attention_mask"].sum())
               for b in batches)
    slots = sum(b["packed"]["input_ids"].size if "packed" in b else
                b["anchor"]["input_ids"].size + b["positive"]["input_ids"].size
                for b in batches)
    arms[name] = {"run": run, "state": state, "step": step, "batches": batches,
                  "times": [], "fill": real / slots, "shapes": list(map(str, shapes)),
                  "compiles": compiles}
  for r in range(args.rounds):
    for arm in arms.values():
      for b in arm["batches"][r * args.steps:(r + 1) * args.steps]:
        start = time.perf_counter()
        arm["state"], m = arm["step"](arm["state"], shd.host_batch_to_global(
            arm["run"].mesh, b))
        jax.block_until_ready(m)
        arm["times"].append(time.perf_counter() - start)
  print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; {n} steps per arm, "
        f"{args.rounds} interleaved rounds")
  med = {}
  for name, arm in arms.items():
    med[name] = statistics.median(arm["times"])
    print(f"{name}: {1e3 * med[name]:.0f} ms/step median, real tokens "
          f"{100 * arm['fill']:.0f}% of the slots; first step (compile) per shape: "
          + ", ".join(f"{s} {t:.1f} s" for s, t in zip(arm["shapes"], arm["compiles"])))
  print(f"step time ratio (packed / padded): {med['packed'] / med['padded']:.3f}")


if __name__ == "__main__":
  hostmem.reexec_if_needed()
  main()
