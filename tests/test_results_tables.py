"""Every committed reproduction table is made from its committed results by the
experiment's own script: `python -m experiments.<name> --table_only` on a copy of
experiments/results/<name>/results.json writes table.md equal to the committed one (so a
table in experiments/RESULTS.md cannot drift from the numbers it claims to show)."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

RESULTS = os.path.join(REPO, "experiments", "results")
NAMES = sorted(n for n in os.listdir(RESULTS)
               if os.path.isfile(os.path.join(RESULTS, n, "results.json")))


def test_every_results_folder_has_its_experiment_and_table():
  assert len(NAMES) >= 9
  for name in NAMES:
    assert os.path.isfile(os.path.join(REPO, "experiments", f"{name}.py")), name
    assert os.path.isfile(os.path.join(RESULTS, name, "table.md")), name


@pytest.mark.parametrize("name", NAMES)
def test_stored_table_remakes_from_stored_results(name, tmp_path):
  shutil.copy(os.path.join(RESULTS, name, "results.json"), tmp_path)
  done = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--table_only",
                         f"--out={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(RESULTS, name, "table.md")) as f:
    assert (tmp_path / "table.md").read_text() == f.read()
