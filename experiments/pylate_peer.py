"""PyLate's side of experiments/vs_pylate_quality.py: runs in a Python that has PyLate
(pylate 1.6 pins sentence-transformers 5.3, so a venv of its own; it imports nothing
from jaxembed).

  <pylate python> experiments/pylate_peer.py SPEC.json

SPEC names the base model folder, the training settings, a JSONL file of the batches
(one line per step: {"anchor": [...], "positive": [...]}) and a JSON file of the
evaluation texts ({set: {"queries": [...], "corpus": [...]}}). It trains PyLate's
`models.ColBERT` with `losses.Contrastive` (InfoNCE over MaxSim, in-batch negatives)
on those batches in order, with the spec's AdamW, warmup-then-linear schedule and
gradient clipping, then writes PyLate's `encode` of every evaluation text:
<out>/vectors_<set>.npz (q, q_lengths, d, d_lengths: the token matrices stacked) and
<out>/train.json (wall time, losses, torch version, threads). Finished outputs are
kept: a rerun does nothing.
"""

import json
import os
import sys
import time

import numpy as np


def schedule(step: int, lr: float, warmup: int, total: int) -> float:
  """The learning rate of update `step` (0 first): linear warmup from 0, then linear
  to 0 at `total` (optax's joined linear schedules, as jaxembed's optimizer)."""
  if step < warmup:
    return lr * step / warmup
  return lr * max(0.0, 1.0 - (step - warmup) / max(total - warmup, 1))


def stacked(vectors) -> tuple[np.ndarray, np.ndarray]:
  vectors = [np.asarray(v, np.float32) for v in vectors]
  return np.concatenate(vectors), np.array([len(v) for v in vectors], np.int64)


def main(spec_path: str) -> None:
  import torch
  from pylate import losses, models
  spec = json.load(open(spec_path))
  out = spec["out"]
  os.makedirs(out, exist_ok=True)
  done = os.path.join(out, "train.json")
  if os.path.exists(done):
    print(f"{done} exists: nothing to do", flush=True)
    return
  torch.manual_seed(spec["seed"])
  model = models.ColBERT(spec["model"], device="cpu", embedding_size=spec["dim"],
                         query_prefix=spec["query_prefix"],
                         document_prefix=spec["document_prefix"],
                         query_length=spec["query_length"],
                         document_length=spec["train_document_length"])
  loss = losses.Contrastive(model, temperature=spec["temperature"])
  opt = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"],
                          betas=(spec["b1"], spec["b2"]), eps=spec["eps"],
                          weight_decay=spec["weight_decay"])
  steps, losses_seen = spec["steps"], []
  start = time.time()
  with open(spec["batches"]) as f:
    for step, line in enumerate(f):
      if step == steps:
        break
      batch = json.loads(line)
      for group in opt.param_groups:
        group["lr"] = schedule(step, spec["learning_rate"], spec["warmup_steps"], steps)
      model.train()
      value = loss([model.tokenize(batch["anchor"], is_query=True),
                    model.tokenize(batch["positive"], is_query=False)])
      opt.zero_grad()
      value.backward()
      if spec["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
      opt.step()
      losses_seen.append(round(float(value), 5))
      if step % 20 == 0 or step == steps - 1:
        rate = (step + 1) / (time.time() - start)
        print(f"step {step + 1}/{steps} loss {losses_seen[-1]:.4f} "
              f"({rate:.2f} steps/s, ETA {(steps - step - 1) / rate:.0f} s)", flush=True)
  if len(losses_seen) < steps:
    sys.exit(f"{spec['batches']} holds {len(losses_seen)} batches, fewer than {steps}")
  wall = time.time() - start
  model.eval()
  model.document_length = spec["document_length"]
  for name, texts in json.load(open(spec["eval"])).items():
    arrays = {}
    for key, is_query in (("q", True), ("d", False)):
      vectors = model.encode(texts["queries" if is_query else "corpus"], is_query=is_query,
                             batch_size=64, convert_to_numpy=True)
      arrays[key], arrays[f"{key}_lengths"] = stacked(vectors)
    path = os.path.join(out, f"vectors_{name}.npz")
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
  with open(done + ".tmp", "w") as f:
    json.dump({"train_wall_s": round(wall, 1), "steps": steps, "loss": losses_seen,
               "torch": torch.__version__, "threads": torch.get_num_threads()}, f)
  os.replace(done + ".tmp", done)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  main(sys.argv[1])
