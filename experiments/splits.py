"""Writes experiments/splits/<set>.json: the dev and test halves (evals/splits.py) of
every packaged retrieval set's queries, each query by a short hash. A study chooses on
dev (eval.split=dev) and reports on test (eval.split=test);
tests/test_splits.py checks that the rule still puts every stored query in its stored
half, and that the sets this machine builds are the ones stored.

  python -m experiments.splits
"""

import json
import os
import sys

from jaxembed import defaults
from jaxembed.data import builders
from jaxembed.evals import splits
from jaxembed.train.inputs import build_eval_tasks

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")


def packaged_tasks(tfds_dir: str | None = None):
  """Every query of the packaged retrieval sets (WordNet's held-out pairs, man pages,
  docstrings), as the default config builds them."""
  c = defaults.base_config()
  if tfds_dir:
    c.data.tfds_dir = tfds_dir
  for name in ("lee", "simlex", "wordsim", "polarity", "newsgroup"):
    c.eval[name] = False
  c.eval.wordnet_queries = 10**9
  d = c.data
  wordnet = builders.wordnet_pairs(wordnet_dir=d.wordnet_dir, tfds_dir=d.tfds_dir,
                                   holdout_fraction=d.holdout_fraction, seed=d.split_seed,
                                   pair_kinds=tuple(d.pair_kinds))
  return build_eval_tasks(c, wordnet)


def main():
  os.makedirs(OUT, exist_ok=True)
  for task in packaged_tasks(sys.argv[1] if len(sys.argv) > 1 else None):
    stored = splits.stored_split(task.queries, task.name)
    with open(os.path.join(OUT, f"{task.name}.json"), "w") as f:
      json.dump(stored, f, indent=0)
      f.write("\n")
    print(f"{task.name}: {len(stored['dev'])} dev, {len(stored['test'])} test queries")


if __name__ == "__main__":
  main()
