"""The results folder of an experiment: results.json (written atomically, so a killed
run leaves the last complete version) and table.md, made from results.json alone."""

from __future__ import annotations

import json
import os


class ResultsFolder:

  def __init__(self, out: str):
    os.makedirs(out, exist_ok=True)
    self.out = out
    self.path = os.path.join(out, "results.json")

  def load(self, *, required: bool = False) -> dict:
    if not os.path.exists(self.path):
      if required:
        raise SystemExit(f"error: {self.path} does not exist (run without --table_only "
                         "first)")
      return {}
    with open(self.path) as f:
      return json.load(f)

  def save(self, results: dict) -> None:
    with open(self.path + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(self.path + ".tmp", self.path)

  def write_table(self, md: str) -> None:
    with open(os.path.join(self.out, "table.md"), "w") as f:
      f.write(md)
    print(md)


def run_or_table(out: str, table_only: bool, table, run) -> None:
  """An experiment's main: `run(folder, results)` adds to results.json (saving as it
  goes) unless `table_only`, then table.md is made from results.json by `table`."""
  folder = ResultsFolder(out)
  results = folder.load(required=table_only)
  if not table_only:
    run(folder, results)
  folder.write_table(table(results))
