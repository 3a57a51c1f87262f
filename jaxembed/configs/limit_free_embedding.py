"""LIMIT's free-embedding search (Weller et al. 2025): which dimensions, how many seeds.

  python -m experiments.limit_free_embedding --config=configs/limit_free_embedding.py
  python -m experiments.limit_free_embedding \
      --config=configs/limit_free_embedding.py:accelerator

Arguments:
  (none)        d = 4 ... 24 in steps of 4, 3 seeds: the CPU reproduction (about 21 min
                on 2 cores; experiments/RESULTS.md).
  accelerator   d = 32 ... 64 in steps of 8, 3 seeds: the larger range, for a GPU/TPU
                or a pod. At d = 64 the paper's fit puts the critical n near 1,430, so
                a trial optimises about 1.0M query vectors against 1,430 documents (a
                1.0M x 1,430 score matrix, about 6 GB with its gradient in float32),
                split over the devices by query.
  smoke         d = 3, 1 seed (tests).
The command line's --dims and --seeds, when given, override the config's.
"""

import ml_collections

from jaxembed.configs import common

KIND = "free_embedding"      # not an experiments.train config: see the command above
VARIANTS = ("accelerator",)


def get_config(arg=None):
  args = common.parse_arg(arg, accelerator=False, smoke=False)
  c = ml_collections.ConfigDict()
  if args.smoke:
    c.dims, c.seeds = (3,), 1
  elif args.accelerator:
    c.dims, c.seeds = (32, 40, 48, 56, 64), 3
  else:
    c.dims, c.seeds = (4, 8, 12, 16, 20, 24), 3
  return c
