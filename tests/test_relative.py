"""Relative representations: cosines to anchors against a slow loop, and invariance
to what relative representations are built to ignore (rotation and rescaling)."""

import numpy as np
import pytest

from jaxembed.evals.relative import relative


def test_relative_equals_a_slow_loop():
  rng = np.random.default_rng(0)
  x, anchors = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
  got = relative(x, anchors)
  for i in range(7):
    for j in range(4):
      want = x[i] @ anchors[j] / (np.linalg.norm(x[i]) * np.linalg.norm(anchors[j]))
      assert got[i, j] == pytest.approx(want, abs=1e-12)


def test_relative_is_invariant_to_rotation_and_scale_of_the_space():
  """The same samples in a rotated, rescaled space (another 'encoder') give the same
  relative representation; their absolute vectors differ."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(20, 6))
  rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  y = 3.0 * x @ rotation
  np.testing.assert_allclose(relative(y, y[:5]), relative(x, x[:5]), atol=1e-12)
  assert not np.allclose(x, y)


def test_stitching_table_remakes_from_stored_results(tmp_path):
  import shutil
  import subprocess
  import sys
  from conftest import REPO
  shutil.copy(f"{REPO}/experiments/results/relative_stitching/results.json", tmp_path)
  done = subprocess.run([sys.executable, "-m", "experiments.relative_stitching",
                         "--table_only", f"--out={tmp_path}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "table.md").read_text() == open(
      f"{REPO}/experiments/results/relative_stitching/table.md").read()
