"""The study statistics against independent references: the standard library's
stdev, the exact bootstrap distribution enumerated for three seeds, the normal
approximation for many queries, coverage over simulated studies, and the verdict rule
case by case."""

import itertools
import statistics

import numpy as np
import pytest

from jaxembed.evals import stats


def test_sample_sd_is_the_n_minus_one_one():
  x = [0.31, 0.35, 0.29, 0.40]
  assert stats.sample_sd(x) == pytest.approx(statistics.stdev(x), rel=1e-12)
  assert stats.sample_sd([0.3]) == 0.0


def test_interval_over_seeds_matches_the_enumerated_bootstrap():
  """Five seeds: every one of the 5^5 resamples enumerated."""
  a = np.array([0.50, 0.52, 0.47, 0.49, 0.51])
  b = np.array([0.55, 0.54, 0.53, 0.47, 0.58])
  diff = b - a
  exact = sorted(np.mean(diff[list(idx)]) for idx in itertools.product(range(5), repeat=5))
  # the 2.5% and 97.5% points of the 3,125 equally likely resample means
  lo, hi = np.quantile(exact, [0.025, 0.975], method="inverted_cdf")
  got = stats.paired_interval(a, b, resamples=200_000)
  assert got.mean == pytest.approx(diff.mean())
  assert got.low == pytest.approx(lo, abs=2e-3) and got.high == pytest.approx(hi, abs=2e-3)
  assert (got.seeds, got.queries) == (5, 0)


def test_interval_over_queries_matches_the_normal_approximation():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(1, 600))
  b = a + rng.normal(0.05, 0.2, size=(1, 600))
  got = stats.paired_interval(a, b, resamples=4000)
  se = (b - a).std(ddof=1) / np.sqrt(600)
  assert got.low == pytest.approx((b - a).mean() - 1.96 * se, abs=0.15 * se * 1.96)
  assert got.high == pytest.approx((b - a).mean() + 1.96 * se, abs=0.15 * se * 1.96)
  assert got.queries == 600


def test_two_level_interval_is_wider_than_either_level_alone():
  rng = np.random.default_rng(1)
  seed_effect = rng.normal(0, 0.05, size=(5, 1))
  a = rng.uniform(size=(5, 200))
  b = a + 0.02 + seed_effect + rng.normal(0, 0.1, size=(5, 200))
  both = stats.paired_interval(a, b, resamples=2000)
  seeds_only = stats.paired_interval(a.mean(1), b.mean(1), resamples=2000)
  queries_only = stats.paired_interval(a[:1], b[:1], resamples=2000)
  width = lambda i: i.high - i.low  # noqa: E731
  assert width(both) > 0.8 * width(seeds_only)
  assert width(both) > width(stats.paired_interval(a.mean(0, keepdims=True),
                                                   b.mean(0, keepdims=True),
                                                   resamples=2000)) * 0.9
  assert queries_only.queries == 200


def test_coverage_over_simulated_studies():
  rng = np.random.default_rng(2)
  hits = 0
  for trial in range(200):
    a = rng.normal(0.0, 1.0, size=30)
    b = a + rng.normal(0.3, 1.0, size=30)
    i = stats.paired_interval(a, b, resamples=2000, seed=trial)
    hits += i.low <= 0.3 <= i.high
  assert 0.89 <= hits / 200 <= 0.99, hits


@pytest.mark.parametrize("low, high, direction, effect, want", [
    (0.5, 2.0, 1, None, "reproduced"),
    (0.5, 2.0, 1, 5.0, "reproduced"),          # smaller than claimed, still above zero
    (-1.0, 1.0, 1, 5.0, "contradicted"),       # excludes the claimed +5
    (-1.0, 6.0, 1, 5.0, "inconclusive"),
    (-1.0, 1.0, 1, None, "inconclusive"),
    (-2.0, -0.5, 1, None, "contradicted"),     # the other sign
    (-2.0, -0.5, -1, None, "reproduced"),      # the paper says b < a
    (-0.5, 0.5, -1, -3.0, "contradicted"),
])
def test_verdict_rule(low, high, direction, effect, want):
  interval = stats.Interval(mean=(low + high) / 2, low=low, high=high)
  assert stats.verdict(interval, direction, effect) == want


def test_a_verdict_row_parses_back_to_its_rule():
  i = stats.Interval(mean=0.031, low=0.004, high=0.06)
  row = stats.verdict_row("man pages", i, +1, scale=100)
  m = stats.ROW.search(row)
  assert m and m["verdict"] == "reproduced" and float(m["low"]) == 0.4
  row = stats.verdict_row("x", stats.Interval(0.0, -0.02, 0.01), +1, paper_effect=0.05,
                          scale=100)
  assert stats.ROW.search(row)["verdict"] == "contradicted"
  assert stats.ROW.search(row)["effect"] == "+5.0"


def test_a_verdict_row_never_shows_minus_zero():
  row = stats.verdict_row("x", stats.Interval(-0.0001, -0.0004, 0.019), +1, scale=100)
  assert "| +0.0 | [+0.0, +1.9] |" in row and "-0.0" not in row


@pytest.mark.parametrize("low, high, margin, want", [
    (-1.0, 1.5, 2.0, "equivalent"),
    (-2.5, 1.0, 2.0, "inconclusive"),          # holds zero, reaches past the margin
    (0.3, 1.5, 2.0, "equivalent"),             # a real difference, inside the margin
    (0.3, 2.5, 2.0, "different"),              # excludes zero, reaches past the margin
    (-4.0, -2.5, 2.0, "different"),
    (-2.0, 1.0, 2.0, "inconclusive"),          # the margin itself is not inside
])
def test_parity_rule(low, high, margin, want):
  interval = stats.Interval(mean=(low + high) / 2, low=low, high=high)
  assert stats.parity(interval, margin) == want
  row = stats.parity_row("x", interval, margin)
  m = stats.PARITY_ROW.search(row)
  assert m and m["verdict"] == want and float(m["margin"]) == margin, row
  with pytest.raises(ValueError, match="margin"):
    stats.parity(interval, 0.0)
