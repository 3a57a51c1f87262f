"""Periodic evaluation during training, written as a JSON log and as TensorBoard event
files that TensorBoard itself reads back; the classification and clustering sets join
the grid through config."""

import json

import pytest

from conftest import run_train


@pytest.mark.slow
def test_periodic_eval_json_and_tensorboard(tmp_path, tfds_dir):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir = tmp_path / "run"
  args = ["--config=configs/ood_ablation.py:smoke,arm=pairs", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", "--config.train.steps=12",
          "--config.train.eval_every=4", "--config.train.checkpoint_every=4",
          "--config.eval.wordsim=True", "--config.eval.polarity=True",
          "--config.eval.newsgroup=True", "--config.eval.max_length=16"]
  done = run_train(args)
  assert done.returncode == 0, done.stderr[-3000:]
  evals = [json.loads(l) for l in (workdir / "eval_log.jsonl").read_text().splitlines()]
  assert [(e["step"], e["label"]) for e in evals] == [
      (0, "before"), (4, "step 4"), (8, "step 8"), (12, "after")]
  cell = evals[-1]["grid"][0]
  assert {"wordsim/spearman", "polarity/knn_acc", "polarity/probe_acc",
          "polarity_clusters/v_measure", "newsgroup/probe_acc",
          "newsgroup_clusters/v_measure"} <= set(cell)
  with open(workdir / "metrics.json") as f:
    assert json.load(f)["after"] == evals[-1]["grid"]

  acc = EventAccumulator(str(workdir / "tensorboard"))
  acc.Reload()
  tag = f"eval/simlex/spearman/L{cell['layer']}_D{cell['dim']}"
  events = acc.Scalars(tag)
  assert [e.step for e in events] == [0, 4, 8, 12]
  for event, logged in zip(events, evals):
    assert event.value == pytest.approx(logged["grid"][0]["simlex/spearman"], abs=1e-6)
  # Every TensorBoard name is the JSON name (legal as it is: no renaming, no warning)
  for name, value in cell.items():
    if name not in ("layer", "dim"):
      events = acc.Scalars(f"eval/{name}/L{cell['layer']}_D{cell['dim']}")
      assert events[-1].value == pytest.approx(value, abs=1e-6), name
  assert "ndcg_at_10" in " ".join(cell)
  assert "is illegal" not in done.stderr
  # Compilation is kept out of the rate and the ETA (the first step is timed apart);
  # the evaluation's encoding shows a progress bar.
  assert "(compilation included); the rate and ETA count from here" in done.stderr
  assert "eval (after):" in done.stderr
  # One heatmap per metric, in the workdir and in TensorBoard; the config as text.
  metrics = sorted({k for k in cell if k not in ("layer", "dim")})
  pngs = sorted(p.name for p in (workdir / "heatmaps").iterdir())
  assert pngs == sorted(m.replace("/", "_") + ".png" for m in metrics)
  assert sorted(acc.Tags()["images"]) == sorted(f"grid/{m}" for m in metrics)
  text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
  assert json.loads(text.strip("`\n")) == json.loads((workdir / "config.json").read_text())
  train = [json.loads(l) for l in (workdir / "train_log.jsonl").read_text().splitlines()]
  losses = acc.Scalars("train/loss")
  assert [e.step for e in losses] == [r["step"] for r in train]
  assert [e.value for e in losses] == pytest.approx([r["loss"] for r in train], rel=1e-6)
  # Each grid cell's loss is logged (smoke grid: layers 1, 2 x dims 8, 16, 32, uniform
  # weights, so the loss is their mean), in JSON and in TensorBoard under one name.
  cells = [f"loss/L{l}_D{d}" for l in (1, 2) for d in (8, 16, 32)]
  for r in train:
    assert set(cells) <= set(r)
    assert sum(r[c] for c in cells) / len(cells) == pytest.approx(r["loss"], rel=1e-5)
  cell_events = acc.Scalars("train/loss/L1_D8")
  assert [e.value for e in cell_events] == pytest.approx([r["loss/L1_D8"] for r in train],
                                                         rel=1e-6)

  # A rerun of the finished run replaces its "after" entry instead of adding one.
  again = run_train(args)
  assert again.returncode == 0, again.stderr[-3000:]
  labels = [json.loads(l)["label"]
            for l in (workdir / "eval_log.jsonl").read_text().splitlines()]
  assert labels == ["before", "step 4", "step 8", "after"]


def test_the_writer_loads_without_torch_and_torch_still_imports(tmp_path):
  """tensorboardX would import PyTorch (seconds of every run's start); the writer keeps
  it out, writes a scalar and an image TensorBoard reads back, and leaves torch
  importable."""
  import subprocess
  import sys
  from conftest import REPO, user_env
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  code = f"""
import sys
import numpy as np
from jaxembed.train.summary import MetricWriter
w = MetricWriter({str(tmp_path)!r})
w.scalars(3, {{"loss": 1.5}}, prefix="train/")
w.images(3, {{"grid": np.zeros((4, 5, 3), np.uint8)}})
w.close()
assert "torch" not in sys.modules, "tensorboardX pulled in torch"
import torch
print("torch", torch.ones(2).sum().item())
"""
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=user_env())
  assert done.returncode == 0, done.stderr[-3000:]
  assert "torch 2.0" in done.stdout
  acc = EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(3, 1.5)]
  assert [e.step for e in acc.Images("grid")] == [3]
