"""JAXEMBED_BENCH_TINY=1 runs a benchmark at a size that takes seconds, so that a
change which breaks one fails a test (tests/test_benchmarks.py) instead of rotting
unnoticed. What it prints at that size measures nothing.

JAXEMBED_BENCH_TFDS_DIR (tiny mode): a prepared data folder to read WordNet from.
"""

from __future__ import annotations

import os

from configs import common

TINY = os.environ.get("JAXEMBED_BENCH_TINY") == "1"


def size(full, tiny):
  """`tiny` in tiny mode, else `full`."""
  return tiny if TINY else full


def config(c):
  """A benchmark's run config; in tiny mode on the smoke model (configs/common.py)."""
  if not TINY:
    return c
  c = common.smoke(c)
  c.data.tfds_dir = os.environ.get("JAXEMBED_BENCH_TFDS_DIR", c.data.tfds_dir)
  return c
