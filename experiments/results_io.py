"""The results folder of an experiment: results.json (written atomically, so a killed
run leaves the last complete version) and table.md, made from results.json alone."""

from __future__ import annotations

import json
import os
import re

# A JSON list of numbers only (no strings, no nested lists).
_NUMBER_LIST = re.compile(r"\[[-+0-9.eE,\s]*\]")


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
    """Writes results.json atomically: indented, each list of numbers on one line
    (per-query score lists would otherwise take a line per number)."""
    text = _NUMBER_LIST.sub(lambda m: re.sub(r"\s+", "", m.group()),
                            json.dumps(results, indent=1))
    with open(self.path + ".tmp", "w") as f:
      f.write(text + "\n")
    os.replace(self.path + ".tmp", self.path)

  def write_table(self, md: str) -> None:
    with open(os.path.join(self.out, "table.md"), "w") as f:
      f.write(md)
    print(md)


def percent_mean_sd(values) -> str:
  """A table cell of fractions as percent: 'mean ± sd' over seeds (population sd), the
  value alone for one seed, '–' for none."""
  import numpy as np
  v = 100 * np.asarray(list(values), dtype=float)
  if not len(v):
    return "–"
  return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def run_or_table(out: str, table_only: bool, table, run) -> None:
  """An experiment's main: `run(folder, results)` adds to results.json (saving as it
  goes) unless `table_only`, then table.md is made from results.json by `table`."""
  folder = ResultsFolder(out)
  results = folder.load(required=table_only)
  if not table_only:
    run(folder, results)
  folder.write_table(table(results))


def check_settings(folder: ResultsFolder, results: dict, settings: dict,
                   key: str = "runs") -> None:
  """Records `settings` in results, refusing a folder whose runs were made with other
  settings (their numbers would not belong in one table)."""
  if results.get(key) and any(results.get(k) != v for k, v in settings.items()):
    raise SystemExit(f"error: {folder.path} holds {key} with "
                     f"{ {k: results.get(k) for k in settings} }, not {settings}: "
                     "use another --out")
  results.update(settings)


def trained_metrics(make_config, workdir: str) -> tuple[dict, float]:
  """(metrics.json, seconds) of the run in `workdir`, trained first with the config
  `make_config()` returns unless it finished earlier (a stopped run resumes)."""
  import time
  from jaxembed import train
  from jaxembed.workdir import Workdir
  path = os.path.join(workdir, Workdir.METRICS)
  start = time.time()
  if not os.path.exists(path):
    train.train_and_evaluate(make_config(), workdir)
  with open(path) as f:
    return json.load(f), round(time.time() - start, 1)


def run_keyed(folder: ResultsFolder, results: dict, grid: list, one) -> None:
  """Runs each (key, args) of `grid` not yet in results['runs'] as `one(key, *args,
  before=...)`, saving after each. `before` is True until a run has returned the
  pretrained model's scores (its result's 'before', kept as results['pretrained'])."""
  import logging
  runs = results.setdefault("runs", {})
  for n, (key, args) in enumerate(grid):
    if key in runs:
      continue
    run = one(key, *args, before=not results.get("pretrained"))
    if run.get("before"):
      results["pretrained"] = run.pop("before")
    run.pop("before", None)
    runs[key] = run
    logging.info("[%d/%d] %s: %.0f s", n + 1, len(grid), key, run["seconds"])
    folder.save(results)
