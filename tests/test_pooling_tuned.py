"""experiments/pooling_tuned.py (pooling heads on a frozen decoder, each tuned on dev):
the chosen learning rate is the best mean dev score of a finished sweep, and the test
table's means and verdict rows follow from the per-query scores in results.json
(checked by a slow obvious computation here). The encoding and head training it
shares with pooling_study.py run end to end in tests/test_pooling_study.py."""

import numpy as np
import pytest

from conftest import import_experiment

SETS = ("wordnet", "manpages", "docstrings")


@pytest.fixture(scope="module")
def study():
  return import_experiment("pooling_tuned")


def _results(rng, seeds=("1", "2"), queries=30):
  lrs = ["1e-3", "1e-2"]
  arms = [f"{a}/{p}" for a in ("causal", "bidirectional")
          for p in ("last_token", "mean", "latent", "multilayer")]
  sweep = {arm: {lr: {"dev": {n: float(rng.uniform()) for n in SETS},
                      "loss_first": 3.4, "loss_last": 2.0, "seconds": 1.0} for lr in lrs}
           for arm in arms}
  rr = {arm: {s: {n: rng.uniform(size=queries).round(6).tolist() for n in SETS}
              for s in seeds} for arm in arms}
  rr["causal/zero_shot_mean"] = {"-": {n: rng.uniform(size=queries).tolist() for n in SETS}}
  return {"lrs": lrs, "sweep": sweep, "rr": rr, "batch": 32, "sweep_seed": 0, "k": 10,
          "machine": "a CPU", "wall_s": {"encode_causal": 60.0},
          "queries": {"test": {n: queries for n in SETS}}}


def test_the_rate_is_chosen_on_the_mean_dev_score_of_a_finished_sweep(study):
  results = _results(np.random.default_rng(0))
  by_lr = results["sweep"]["causal/latent"]
  by_lr["1e-3"]["dev"] = {"wordnet": 0.1, "manpages": 0.5, "docstrings": 0.3}  # mean .30
  by_lr["1e-2"]["dev"] = {"wordnet": 0.4, "manpages": 0.2, "docstrings": 0.2}  # mean .27
  assert study.chosen_lr(results, "causal/latent") == "1e-3"
  del by_lr["1e-3"]
  assert study.chosen_lr(results, "causal/latent") is None       # unfinished
  assert study.chosen_lr(results, "causal/other") is None


def test_the_test_table_is_made_from_the_per_query_scores(study):
  from jaxembed.evals import stats
  results = _results(np.random.default_rng(1))
  text = study.table(results)
  rr = results["rr"]
  per = [100 * sum(rr["bidirectional/mean"][s]["docstrings"]) / 30 for s in ("1", "2")]
  mean, sd = (per[0] + per[1]) / 2, abs(per[0] - per[1]) / 2 ** 0.5
  test_part = text.split("Test halves")[1]
  row = next(line for line in test_part.splitlines()
             if line.startswith("| bidirectional | mean | "))
  assert row.split(" | ")[5] == f"{mean:.1f} ± {sd:.1f}"
  b = np.array([rr["bidirectional/latent"][s]["manpages"] for s in ("1", "2")])
  a = np.array([rr["causal/latent"][s]["manpages"] for s in ("1", "2")])
  want = stats.verdict_row("bidirectional/latent − causal/latent, man pages",
                           stats.paired_interval(a, b, resamples=2000), +1, scale=100)
  assert want in text
  assert "| causal | zero-shot mean | – | " in text
  assert text.count("| > 0 |") == 7 * 3
