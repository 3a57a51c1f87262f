"""2D Matryoshka fine-tuning of all-MiniLM-L6-v2 on WordNet pairs (the default job).

  python -m experiments.train --config=configs/minilm_wordnet_2d.py --workdir=runs/default

Starts from all-MiniLM-L6-v2's weights and trains InfoNCE (scale 20, in-batch
negatives) over every (layer, dim) cell of layers 1..6 x dims {32, 64, 128, 256, 384},
all cells from one encoder pass. Evaluates that grid before and after on held-out
WordNet retrieval (definition -> example, nDCG@10 / MRR@10), Lee document similarity and
SimLex-999 (Spearman). Expected on 2 CPU cores: about 12 minutes; small cells gain
clearly on WordNet retrieval while (6, 384) stays within a point (see README.md).

Arguments (comma-separated after the file name):
  smoke                  tiny random model, seconds (tests)
  variant=starbucks      Starbucks' fixed (layer, dim) pairs instead of the full grid
                         (Zhuang et al. 2024): for BERT-base (2,32) (4,64) (6,128)
                         (8,256) (10,512) (12,768); halved in layers and width for this
                         6-layer, 384-wide model, with the KL term to the full model.
  variant=mrl            1D Matryoshka (Kusupati et al. 2022): dims at the last layer.
"""

from configs import common

# Arguments the config tests build, besides None and "smoke".
VARIANTS = ("variant=starbucks", "variant=mrl", "smoke,variant=starbucks")


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, variant="grid")
  c = common.base_config()
  if args.variant == "starbucks":
    c.loss.matryoshka.mode = "pairs"
    c.loss.matryoshka.pairs = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
    c.loss.kl_weight = 1.0
  elif args.variant == "mrl":
    c.loss.matryoshka.mode = "mrl"
  elif args.variant != "grid":
    raise ValueError(f"variant={args.variant!r}; valid: grid, starbucks, mrl")
  if args.smoke:
    c = common.smoke(c)
    if args.variant == "starbucks":
      c.loss.matryoshka.pairs = ((1, 16), (2, 32))
  return c
