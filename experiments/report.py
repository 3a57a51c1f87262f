r"""Writes every stored table into experiments/RESULTS.md and README.md, from the stored
JSON; `--check` changes nothing and exits 1 on any difference.

A table in a document is a marked block:

    <!-- table: NAME -->
    ...the contents of experiments/results/NAME/table.md...
    <!-- /table: NAME -->

and table.md is made from experiments/results/NAME/results.json alone by the
experiment's own `python -m experiments.NAME --table_only`. The report remakes every
table.md from its results.json (in a scratch folder: nothing is written with --check),
then every block from its table.md, so a number in a block that no stored result gives
is a difference, and so is a stored result that changed.

  python -m experiments.report            # rewrite table.md files and blocks
  python -m experiments.report --check    # exit 1 and name each difference
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("experiments/RESULTS.md", "README.md")
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table: "
                   r"(?P=name) -->)", re.S)

_CHECK = flags.DEFINE_bool("check", False, "change nothing; exit 1 on any difference")
_RESULTS = flags.DEFINE_string("results", os.path.join(REPO, "experiments", "results"),
                               "the stored results (one folder per experiment)")
_ROOT = flags.DEFINE_string("root", REPO, "the tree whose documents are checked")


def remake_table(name: str, results_dir: str) -> str:
  """table.md of experiment `name` made from its results.json alone, in a scratch
  folder; SystemExit naming the experiment when that fails."""
  with tempfile.TemporaryDirectory() as tmp:
    shutil.copy(os.path.join(results_dir, name, "results.json"), tmp)
    done = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--table_only",
                           f"--out={tmp}"], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
      raise SystemExit(f"error: experiments.{name} --table_only failed on "
                       f"{results_dir}/{name}/results.json:\n{done.stderr[-2000:]}")
    with open(os.path.join(tmp, "table.md")) as f:
      return f.read()


def experiments(results_dir: str) -> list[str]:
  return sorted(n for n in os.listdir(results_dir)
                if os.path.isfile(os.path.join(results_dir, n, "results.json")))


def report(root: str, results_dir: str, check: bool) -> list[str]:
  """The differences found (check) or fixed (not check), one line each."""
  names = experiments(results_dir)
  with ThreadPoolExecutor(max_workers=2) as pool:
    tables = dict(zip(names, pool.map(lambda n: remake_table(n, results_dir), names)))
  differences = []
  for name, md in tables.items():
    path = os.path.join(results_dir, name, "table.md")
    stored = open(path).read() if os.path.exists(path) else None
    if stored != md:
      differences.append(f"{path}: differs from what its results.json gives")
      if not check:
        with open(path, "w") as f:
          f.write(md)
  for doc in DOCUMENTS:
    path = os.path.join(root, doc)
    text = open(path).read()

    def fill(m):
      name = m.group("name")
      if name not in tables:
        differences.append(f"{path}: block {name!r} has no stored results "
                           f"({results_dir}/{name}/results.json)")
        return m.group(0)
      if m.group("body") != tables[name]:
        differences.append(f"{path}: block {name!r} differs from its results.json")
      return m.group(1) + tables[name] + m.group(4)
    new = BLOCK.sub(fill, text)
    if new != text and not check:
      with open(path, "w") as f:
        f.write(new)
  return differences


def main(argv):
  del argv
  differences = report(_ROOT.value, _RESULTS.value, _CHECK.value)
  for line in differences:
    print(("differs: " if _CHECK.value else "updated: ") + line)
  if _CHECK.value and differences:
    sys.exit(1)
  if not differences:
    print("every table and block is what the stored results give")


if __name__ == "__main__":
  app.run(main)
