"""Every committed reproduction table is made from its committed results by the
experiment's own script (`python -m experiments.<name> --table_only` on a copy of
experiments/results/<name>/results.json writes table.md equal to the committed one),
and every marked table block of RESULTS.md and README.md is that table.md:
`python -m experiments.report --check` exits 0 on the committed tree, and 1 when a
stored value is removed. Every verdict row is the rule of jaxembed/evals/stats.py
applied to its own interval."""

import json
import os
import shutil
import subprocess
import sys

from conftest import REPO
from jaxembed.evals import stats

RESULTS = os.path.join(REPO, "experiments", "results")
NAMES = sorted(n for n in os.listdir(RESULTS)
               if os.path.isfile(os.path.join(RESULTS, n, "results.json")))


def test_every_results_folder_has_its_experiment_and_table():
  assert len(NAMES) >= 9
  for name in NAMES:
    assert os.path.isfile(os.path.join(REPO, "experiments", f"{name}.py")), name
    assert os.path.isfile(os.path.join(RESULTS, name, "table.md")), name


def report_check(*args):
  return subprocess.run([sys.executable, "-m", "experiments.report", "--check", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900)


def test_report_check_passes_on_the_committed_tree():
  done = report_check()
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  with open(os.path.join(REPO, "experiments", "RESULTS.md")) as f:
    blocks = f.read().count("<!-- table: ")
  assert blocks >= 6


def test_report_check_fails_when_a_stored_value_is_removed(tmp_path):
  """One query's BM25 score removed from the multi-vector study's results: its table
  differs (and a value the table cannot do without makes the remake fail, named)."""
  name = "multivector_study"
  copy = tmp_path / "results"
  os.makedirs(copy / name)
  for f in ("results.json", "table.md"):
    shutil.copy(os.path.join(RESULTS, name, f), copy / name / f)
  results = json.load(open(copy / name / "results.json"))
  del results["rr"]["bm25"]["manpages"][0]
  json.dump(results, open(copy / name / "results.json", "w"))
  done = report_check(f"--results={copy}")
  assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
  assert f"{name}/table.md: differs" in done.stdout
  del results["rr"]["multi"][str(results["seeds"][0])]["manpages"][0]   # ragged seeds
  json.dump(results, open(copy / name / "results.json", "w"))
  done = report_check(f"--results={copy}")
  assert done.returncode == 1 and f"experiments.{name} --table_only failed" in done.stderr


def test_every_verdict_row_follows_the_rule():
  rows = 0
  for doc in ("experiments/RESULTS.md", "README.md"):
    for m in stats.ROW.finditer(open(os.path.join(REPO, doc)).read()):
      interval = stats.Interval(float(m["mean"]), float(m["low"]), float(m["high"]))
      direction = 1 if m["sign"] == ">" else -1
      effect = None if m["effect"] is None else float(m["effect"])
      assert stats.verdict(interval, direction, effect) == m["verdict"], m.group(0)
      rows += 1
  assert rows >= 3


def test_every_parity_row_follows_the_rule():
  for doc in ("experiments/RESULTS.md", "README.md"):
    for m in stats.PARITY_ROW.finditer(open(os.path.join(REPO, doc)).read()):
      interval = stats.Interval(float(m["mean"]), float(m["low"]), float(m["high"]))
      assert stats.parity(interval, float(m["margin"])) == m["verdict"], m.group(0)


def test_results_save_keeps_number_lists_on_one_line(tmp_path):
  """results.json round-trips exactly; a per-query list takes one line, not one per
  number; lists of strings and nested lists keep the indented layout."""
  from experiments.results_io import ResultsFolder
  data = {"rr": {"1": [0.5, 1.0, 0.0, 1e-05, -2]}, "names": ["a", "b"],
          "cells": [[6, 384], [2, 64]], "n": 3}
  folder = ResultsFolder(str(tmp_path))
  folder.save(data)
  text = (tmp_path / "results.json").read_text()
  assert json.loads(text) == data
  assert '"1": [0.5,1.0,0.0,1e-05,-2]' in text
  assert '"a",\n' in text
