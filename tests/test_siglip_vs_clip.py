"""experiments/siglip_vs_clip.py end to end on smoke towers: each (loss, batch, seed)
trains with the objective that reads classes, finished runs are read back rather than
retrained, the table is made from results.json alone, and a sweep with other settings
is refused rather than mixed in."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def sweep(out, *extra):
  return subprocess.run([sys.executable, "-m", "experiments.siglip_vs_clip", f"--out={out}",
                         "--config_arg=smoke", "--steps=3", "--batches=16", "--seeds=0",
                         "--images=100", *extra],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_sweep_trains_both_losses_resumes_and_remakes_its_table(tmp_path):
  out = tmp_path / "svc"
  done = sweep(out)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert set(results["runs"]) == {"clip_b16_s0", "siglip_b16_s0"}
  for key, loss in (("clip_b16_s0", "multi_positive_info_nce"), ("siglip_b16_s0", "sigmoid")):
    config = json.loads((out / "runs" / key / "config.json").read_text())
    assert config["loss"]["name"] == loss and config["train"]["batch_size"] == 16
    assert config["data"]["distinct_classes"] is False and config["train"]["steps"] == 3
    metrics = json.loads((out / "runs" / key / "metrics.json").read_text())["after"]
    assert results["runs"][key]["acc"] == {
        str(r["dim"]): r["fashion_mnist/zero_shot_acc"] for r in metrics}
  table = (out / "table.md").read_text()
  acc = {k: 100 * r["acc"]["32"] for k, r in results["runs"].items()}
  diff = acc["siglip_b16_s0"] - acc["clip_b16_s0"]
  assert (f"| 16 | {acc['clip_b16_s0']:.1f} ± 0.0 (n=1) | {acc['siglip_b16_s0']:.1f} ± 0.0 "
          f"(n=1) | {diff:+.1f} (seeds: {diff:+.1f}) |") in table
  # The learnable temperature (and SigLIP's bias) are logged as the objective uses them.
  last = json.loads((out / "runs" / "siglip_b16_s0" / "train_log.jsonl")
                    .read_text().splitlines()[-1])
  assert 9.0 < last["scale"] < 11.0 and -10.5 < last["bias"] < -9.5
  last = json.loads((out / "runs" / "clip_b16_s0" / "train_log.jsonl")
                    .read_text().splitlines()[-1])
  assert 9.0 < last["scale"] < 11.0 and "bias" not in last

  # Finished runs are read back: no training the second time (no new train log lines).
  log = (out / "runs" / "clip_b16_s0" / "train_log.jsonl").read_text()
  again = sweep(out)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (out / "runs" / "clip_b16_s0" / "train_log.jsonl").read_text() == log
  assert (out / "table.md").read_text() == table

  copy = tmp_path / "copy"
  copy.mkdir()
  shutil.copy(out / "results.json", copy)
  remade = subprocess.run([sys.executable, "-m", "experiments.siglip_vs_clip",
                           "--table_only", f"--out={copy}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert remade.returncode == 0, remade.stderr[-3000:]
  assert (copy / "table.md").read_text() == table

  other = sweep(out, "--steps=4")
  assert other.returncode != 0
  assert "holds runs with" in other.stderr and "use another --out" in other.stderr
  assert np.isfinite(diff)
