"""experiments/teacher_study.py: the table's verdict rows are the comparisons whose
arms every seed has, each the paired interval of the per-query scores in results.json;
an arm added later (mpnet_anchor) joins the table without changing the rows before."""

import numpy as np
import pytest

from conftest import import_experiment


@pytest.fixture(scope="module")
def study():
  return import_experiment("teacher_study")


def _results(rng, arms, seeds=("1", "2"), queries=25):
  cells = [[6, 384], [2, 64]]
  scores = lambda: {n: {f"{l}_{d}": rng.uniform(size=queries).round(6).tolist()  # noqa: E731
                        for l, d in cells} for n in ("manpages", "wordnet")}
  rr = {"pretrained": scores(), "teacher": {n: {"12_768": [0.5] * queries}
                                            for n in ("manpages", "wordnet")}}
  for arm in arms:
    rr[arm] = {s: scores() for s in seeds}
  return {"k": 10, "rr": rr, "seeds": [int(s) for s in seeds],
          "sets": ["manpages", "wordnet"], "cells": cells, "machine": "a CPU",
          "queries": {"manpages": queries, "wordnet": queries}}


def test_the_anchored_arm_adds_its_rows_and_leaves_the_others(study):
  from jaxembed.evals import stats
  before = study.table(_results(np.random.default_rng(0), ["self_kl", "mpnet_kl", "default"]))
  assert "mpnet_anchor" not in before
  results = _results(np.random.default_rng(0),
                     ["self_kl", "mpnet_kl", "default", "mpnet_anchor"])
  after = study.table(results)
  rows = lambda text: [l for l in text.splitlines() if l.startswith("| mpnet_kl −")]  # noqa: E731
  assert rows(before) == rows(after) and len(rows(after)) == 8
  rr = results["rr"]
  a = np.array([rr["default"][s]["wordnet"]["2_64"] for s in ("1", "2")])
  b = np.array([rr["mpnet_anchor"][s]["wordnet"]["2_64"] for s in ("1", "2")])
  want = stats.verdict_row("mpnet_anchor − default, WordNet, (2, 64)",
                           stats.paired_interval(a, b, resamples=2000), +1, scale=100)
  assert want in after
  assert "| mpnet_anchor − mpnet_kl, man pages, (6, 384) | > 0 |" in after
  assert "MPNet teacher, KL + anchor (mapped)" in after
