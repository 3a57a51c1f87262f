"""experiments/multivector_matryoshka.py (Matryoshka over multi-vector cells by the
evidence protocol): the two arms differ in the loss alone, a cell's scores are MaxSim
over cut and renormalised token vectors (checked by a float64 loop), and the table's
means and verdict rows follow from the per-query scores in results.json."""

import numpy as np
import pytest

from conftest import import_experiment


@pytest.fixture(scope="module")
def study():
  return import_experiment("multivector_matryoshka")


def test_the_arms_differ_in_the_loss_alone(study):
  from jaxembed.configs import colbert_minilm
  multi = colbert_minilm.get_config(study.config_arg("multi", ""))
  grid = colbert_minilm.get_config(study.config_arg("grid", ""))
  assert multi.loss.matryoshka.mode == "none" and grid.loss.matryoshka.mode == "grid"
  without = lambda c: {**c.to_dict(), "loss": {k: v for k, v in c.loss.to_dict().items()  # noqa: E731
                                                if k != "matryoshka"}}
  assert without(multi) == without(grid)
  assert multi.loss.to_dict() != grid.loss.to_dict()
  cells = study.grid_cells("")
  assert len(cells) == 9 and max(cells) == (6, 128)
  assert study.grid_cells("smoke") == [(l, d) for l in (1, 2) for d in (4, 8, 16)]


def test_a_cell_is_maxsim_over_cut_and_renormalised_vectors(study):
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  queries = [unit(rng.normal(size=(32, 16))).astype(np.float32) for _ in range(5)]
  docs = [unit(rng.normal(size=(int(n), 16))).astype(np.float32)
          for n in rng.integers(1, 40, size=9)]
  dim = 6
  got = study.maxsim_matrix(study.cut(queries, dim), study.cut(docs, dim))
  want = np.zeros((5, 9))
  for i, q in enumerate(queries):
    for j, d in enumerate(docs):
      qc = [row[:dim].astype(np.float64) / np.linalg.norm(row[:dim]) for row in q]
      dc = [row[:dim].astype(np.float64) / np.linalg.norm(row[:dim]) for row in d]
      want[i, j] = sum(max(float(a @ b) for b in dc) for a in qc)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _results(rng, seeds=("1", "2"), queries=30):
  cells = [[6, 128], [2, 32], [6, 32]]
  rr = {arm: {s: {n: {f"{l}_{d}": rng.uniform(size=queries).round(6).tolist()
                      for l, d in cells} for n in ("manpages", "wordnet")}
              for s in seeds} for arm in ("multi", "grid")}
  return {"k": 10, "rr": rr, "sets": ["manpages", "wordnet"], "cells": cells,
          "machine": "a CPU", "queries": {"manpages": queries, "wordnet": queries},
          "corpus": {"manpages": 99, "wordnet": 98}}


def test_the_table_is_made_from_the_per_query_scores(study):
  from jaxembed.evals import stats
  results = _results(np.random.default_rng(0))
  text = study.table(results)
  rr = results["rr"]
  per = [100 * sum(rr["grid"][s]["wordnet"]["2_32"]) / 30 for s in ("1", "2")]
  mean, sd = (per[0] + per[1]) / 2, abs(per[0] - per[1]) / 2 ** 0.5
  wordnet = text.split("**WordNet**")[1].split("\n\n")[1].splitlines()
  assert wordnet[2].startswith("| (2, 32) |") and wordnet[2].endswith(f"| {mean:.1f} ± {sd:.1f} |")
  # the full cell, however the cells are listed, is claimed the other way round
  a = np.array([rr["multi"][s]["manpages"]["6_128"] for s in ("1", "2")])
  b = np.array([rr["grid"][s]["manpages"]["6_128"] for s in ("1", "2")])
  want = stats.verdict_row("grid − multi, man pages, (6, 128)",
                           stats.paired_interval(a, b, resamples=2000), -1, scale=100)
  assert want in text and "| < 0 |" in want
  assert "| grid − multi, WordNet, (6, 32) | > 0 |" in text
  assert "| grid − multi, WordNet, (6, 128) | > 0 |" not in text


def test_a_seed_one_arm_has_not_finished_stays_out_of_the_tables(study):
  results = _results(np.random.default_rng(1), seeds=("1", "2", "3"))
  del results["rr"]["grid"]["3"]["wordnet"]["6_32"]
  text = study.table(results)
  assert "over seeds 1, 2;" in text and "unfinished): 3." in text
