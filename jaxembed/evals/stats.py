"""The statistics every study reports with: sample spread, paired differences between
arms with a 95% bootstrap interval, and a verdict by a rule stated before the run.

- `sample_sd`: the sample standard deviation (n - 1), never the population one.
- `paired_interval(a, b)`: arm b minus arm a, paired by seed (`a[s]`, `b[s]` come from
  the same seed: same data order, same initialisation where the arms share it); the
  percentile bootstrap over seeds.
- `paired_interval(a, b)` with 2-d inputs [seeds, queries] (per-query scores, e.g.
  MRR@10 of each test query): a two-level bootstrap, seeds resampled and then queries,
  the same resample for both arms, so the interval carries both the training noise and
  the choice of queries.
- `verdict(interval, direction, paper_effect)`:
    reproduced    the interval excludes zero on the paper's side;
    contradicted  otherwise, when it excludes the paper's effect (the effect is smaller
                  than claimed, or of the other sign): with no effect size given, when
                  it lies wholly on the other side of zero;
    inconclusive  otherwise.
- `parity(interval, margin)`, for a claim of no difference (two implementations of
  one method, with a margin stated before the run):
    equivalent    the interval lies inside (-margin, +margin) (a difference smaller
                  than the margin, even one that excludes zero, is parity as claimed);
    different     otherwise, when it excludes zero;
    inconclusive  otherwise (it holds zero and reaches past the margin).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
VERDICTS = ("reproduced", "contradicted", "inconclusive")


def sample_sd(values) -> float:
  """Standard deviation with n - 1 in the denominator (0 for a single value)."""
  x = np.asarray(values, np.float64)
  return float(x.std(ddof=1)) if x.size > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class Interval:
  mean: float        # the observed mean difference (b - a)
  low: float
  high: float
  level: float = LEVEL
  seeds: int = 0
  queries: int = 0   # 0: over seeds only

  def excludes(self, value: float) -> bool:
    return not self.low <= value <= self.high

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _resample_means(diff: np.ndarray, rng, resamples: int) -> np.ndarray:
  """Bootstrap means of diff [seeds] or [seeds, queries] (two levels)."""
  n_seeds = diff.shape[0]
  seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
  if diff.ndim == 1:
    return diff[seeds].mean(axis=1)
  n_q = diff.shape[1]
  out = np.empty(resamples)
  for r in range(resamples):       # queries resampled once per draw, for every seed
    q = rng.integers(0, n_q, size=n_q)
    out[r] = diff[seeds[r]][:, q].mean()
  return out


def paired_interval(a, b, *, level: float = LEVEL, resamples: int = RESAMPLES,
                    seed: int = 0) -> Interval:
  """The mean of b - a and its percentile-bootstrap interval. a, b: [seeds] or
  [seeds, queries], the same seed (and query) at the same index."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[0] < 1:
    raise ValueError(f"paired arms need one shape [seeds] or [seeds, queries], got "
                     f"{a.shape} and {b.shape}")
  diff = b - a
  means = _resample_means(diff, np.random.default_rng(seed), resamples)
  tail = (1 - level) / 2
  low, high = np.quantile(means, [tail, 1 - tail])
  return Interval(float(diff.mean()), float(low), float(high), level, diff.shape[0],
                  diff.shape[1] if diff.ndim == 2 else 0)


def verdict(interval: Interval, direction: int, paper_effect: float | None = None) -> str:
  """The rule in the module's docstring. direction: +1 when the paper says b > a,
  -1 when it says b < a; paper_effect: the paper's b - a (same units), if it gives one."""
  if direction not in (1, -1):
    raise ValueError(f"direction={direction!r}: +1 (b above a) or -1 (b below a)")
  low, high = direction * interval.low, direction * interval.high
  low, high = min(low, high), max(low, high)        # the interval on the paper's side
  if low > 0:
    return "reproduced"
  if paper_effect is not None:
    if high < direction * paper_effect:
      return "contradicted"
  elif high < 0:
    return "contradicted"
  return "inconclusive"


PARITY = ("equivalent", "different", "inconclusive")


def parity(interval: Interval, margin: float) -> str:
  """The parity rule in the module's docstring; margin > 0, in the interval's units."""
  if not margin > 0:
    raise ValueError(f"margin={margin!r} must be positive")
  if -margin < interval.low and interval.high < margin:
    return "equivalent"
  if interval.excludes(0.0):
    return "different"
  return "inconclusive"


# A parity row: "| name | ±m | Δ | [low, high] | verdict |" (tests/test_results_tables.py
# applies the rule to each again).
PARITY_ROW = re.compile(r"^\| (?P<name>[^|]+) \| ±(?P<margin>[\d.]+) \| (?P<mean>[+-][\d.]+) "
                        r"\| \[(?P<low>[+-][\d.]+), (?P<high>[+-][\d.]+)\] "
                        r"\| (?P<verdict>equivalent|different|inconclusive) \|$", re.M)


def parity_row(name: str, interval: Interval, margin: float, scale: float = 1.0) -> str:
  """"| name | ±margin | Δ | [low, high] | verdict |", numbers times `scale` to one
  decimal, the verdict computed on the rounded numbers (as `verdict_row`)."""
  r = lambda x: round(scale * x, 1) + 0.0  # noqa: E731
  shown = Interval(r(interval.mean), r(interval.low), r(interval.high))
  m = r(margin)
  return (f"| {name} | ±{m:.1f} | {shown.mean:+.1f} | [{shown.low:+.1f}, "
          f"{shown.high:+.1f}] | {parity(shown, m)} |")


# A verdict row of a results table: "| name | claim | Δ | [low, high] | verdict |", the
# claim "> 0", "< 0" or "> 0, paper +x.x"; tests/test_results_tables.py parses every
# such row of RESULTS.md and applies the rule to it again.
ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<sign>[<>]) 0(, paper (?P<effect>[+-][\d.]+))? "
                 r"\| (?P<mean>[+-][\d.]+) \| \[(?P<low>[+-][\d.]+), (?P<high>[+-][\d.]+)\] "
                 r"\| (?P<verdict>reproduced|contradicted|inconclusive) \|$", re.M)


def verdict_row(name: str, interval: Interval, direction: int,
                paper_effect: float | None = None, scale: float = 1.0) -> str:
  """The row, numbers times `scale` to one decimal, the verdict computed on the rounded
  numbers so that a reader (and the test) applying the rule to the row gets it."""
  r = lambda x: round(scale * x, 1) + 0.0  # noqa: E731  (+ 0.0: no "-0.0")
  shown = Interval(r(interval.mean), r(interval.low), r(interval.high))
  effect = None if paper_effect is None else r(paper_effect)
  claim = (">" if direction > 0 else "<") + " 0" + (
      "" if effect is None else f", paper {effect:+.1f}")
  return (f"| {name} | {claim} | {shown.mean:+.1f} | [{shown.low:+.1f}, {shown.high:+.1f}] "
          f"| {verdict(shown, direction, effect)} |")
