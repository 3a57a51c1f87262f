"""Dev and test halves by query: the rule is stable and balanced, a task's halves
partition its queries over one corpus, and the stored halves of the packaged sets
(experiments/splits/*.json) are the ones this machine's rule and data give."""

import json
import os

import numpy as np
import pytest

from conftest import REPO
from jaxembed.errors import ConfigError
from jaxembed.evals import splits
from jaxembed.evals.tasks import RetrievalTask

STORED = os.path.join(REPO, "experiments", "splits")


def test_half_is_a_balanced_function_of_the_text_set_and_seed():
  texts = [f"query number {i}" for i in range(20_000)]
  halves = [splits.half(t, "manpages") for t in texts]
  assert 0.48 < halves.count("dev") / len(texts) < 0.52
  assert halves == [splits.half(t, "manpages") for t in texts]
  other_set = [splits.half(t, "docstrings") for t in texts]
  other_seed = [splits.half(t, "manpages", seed=1) for t in texts]
  for other in (other_set, other_seed):
    agree = np.mean([x == y for x, y in zip(halves, other)])
    assert 0.47 < agree < 0.53          # independent assignments
  with pytest.raises(ValueError, match="split="):
    splits.keep("q", "manpages", "valid")


def test_a_tasks_halves_partition_its_queries_over_one_corpus():
  pairs = [{"anchor": f"q{i}", "positive": f"d{i % 7}"} for i in range(40)]
  task = RetrievalTask.from_pairs("set", pairs, None)
  dev = task.with_queries(lambda q: splits.keep(q, "set", "dev"))
  test = task.with_queries(lambda q: splits.keep(q, "set", "test"))
  assert sorted(dev.queries + test.queries) == sorted(task.queries)
  assert dev.corpus == test.corpus == task.corpus
  for half in (dev, test):
    for q, row in zip(half.queries, half.relevance):
      np.testing.assert_array_equal(row, task.relevance[task.queries.index(q)])


def test_stored_halves_are_the_rules_on_this_machines_sets(tfds_dir):
  from experiments.splits import packaged_tasks
  tasks = packaged_tasks(tfds_dir)
  assert sorted(t.name for t in tasks) == sorted(
      f[:-5] for f in os.listdir(STORED) if f.endswith(".json"))
  for task in tasks:
    stored = json.load(open(os.path.join(STORED, f"{task.name}.json")))
    where = {h: half for half in ("dev", "test") for h in stored[half]}
    found = [q for q in task.queries if splits.query_hash(q) in where]
    # this machine's copy of the set may differ a little (another package version)
    assert len(found) >= 0.95 * len(task.queries), task.name
    assert all(where[splits.query_hash(q)] == splits.half(q, task.name) for q in found)


def test_eval_split_selects_the_half_and_a_bad_value_is_named(smoke_config):
  from jaxembed.train.inputs import build_eval_tasks
  c = smoke_config(**{"eval.split": "dev", "eval.simlex": False, "eval.wordnet_queries": 0})
  c.eval.ood = ("docstrings",)
  tasks = build_eval_tasks(c, None)
  assert tasks and all(splits.half(q, t.name) == "dev" for t in tasks for q in t.queries)
  c.eval.split = "train"
  with pytest.raises(ConfigError, match="eval.split"):
    build_eval_tasks(c, None)
