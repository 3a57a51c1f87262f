"""experiments/schemes_study.py (Starbucks vs 2DMSE vs separate sub-models by the
evidence protocol): each arm's config argument builds its config, and the table's
means and verdict rows follow from the per-query scores in results.json, checked by a
slow obvious computation here."""

import numpy as np
import pytest

from conftest import import_experiment


@pytest.fixture(scope="module")
def study():
  return import_experiment("schemes_study")


def test_every_arm_and_cell_builds_its_config(study):
  from jaxembed.configs import matryoshka_schemes
  for arm in study.ARMS:
    cells = study.pairs("") if arm == "separate" else [None]
    for cell in cells:
      c = matryoshka_schemes.get_config(study.config_arg(arm, cell, 400, ""))
      assert c.train.steps == 400
      if cell:
        assert tuple(c.loss.matryoshka.pairs) == (tuple(cell),)


def _results(rng, seeds=("3", "4"), queries=40):
  cells = [[1, 16], [6, 384]]
  rr = {arm: {s: {n: {f"{l}_{d}": rng.uniform(size=queries).round(6).tolist()
                      for l, d in cells} for n in ("wordnet", "manpages")}
              for s in seeds} for arm in ("starbucks", "2dmse", "separate")}
  return {"k": 10, "rr": rr, "sets": ["wordnet", "manpages"], "cells": cells,
          "settings": {"steps": 400}, "machine": "a CPU",
          "queries": {"wordnet": queries, "manpages": queries}}


def test_the_table_is_made_from_the_per_query_scores(study):
  from jaxembed.evals import stats
  results = _results(np.random.default_rng(0))
  text = study.table(results)
  rr = results["rr"]
  # the mean over seeds of each seed's mean over queries, and its sample sd
  per = [100 * sum(rr["2dmse"][s]["manpages"]["6_384"]) / 40 for s in ("3", "4")]
  mean, sd = (per[0] + per[1]) / 2, abs(per[0] - per[1]) / 2 ** 0.5
  assert f"| {mean:.1f} ± {sd:.1f} |" in text.split("**man pages**")[1].split("\n\n")[1]
  # the full cell is claimed the other way round against the separate model
  b = np.array([rr["starbucks"][s]["wordnet"]["6_384"] for s in ("3", "4")])
  a = np.array([rr["separate"][s]["wordnet"]["6_384"] for s in ("3", "4")])
  interval = stats.paired_interval(a, b, resamples=2000)
  want = stats.verdict_row("starbucks − separate, WordNet, (6, 384)", interval, -1, scale=100)
  assert want in text and "| < 0 |" in want
  assert "| starbucks − separate, WordNet, (1, 16) | > 0 |" in text
  assert "| starbucks − separate, WordNet, (6, 384) | > 0 |" not in text


def test_a_seed_some_arm_has_not_finished_stays_out_of_the_tables(study):
  results = _results(np.random.default_rng(1), seeds=("3", "4", "5"))
  del results["rr"]["separate"]["5"]
  text = study.table(results)
  assert "over seeds 3, 4;" in text and "unfinished): 5." in text
