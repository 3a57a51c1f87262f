"""Model merging against joint training (Li et al. 2024, "Improving General Text
Embedding Model: Tackling Task Conflict and Data Imbalance through Model Merging"): the
training arms of experiments/merge_balanced.py, one per argument.

  python -m experiments.train --config=configs/model_merging.py:arm=balanced --workdir=runs/mb
  python -m experiments.merge_balanced --out=runs/merge_balanced --seeds=3   # the study

all-MiniLM-L6-v2 with the pair loss at its full size (6, 384) (InfoNCE, scale 20,
in-batch negatives), batch 32, on WordNet's two kinds of training pair: 45,772
(definition, example) pairs and 196,475 (lemma, definition) pairs (the default split;
the natural mixture is 81% lemma pairs). Every batch is drawn from one kind.

Arguments (comma-separated):
  arm=A           specialist A: (definition, example) pairs alone, `steps` steps
  arm=B           specialist B: (lemma, definition) pairs alone, `steps` steps
  arm=balanced    joint training on both kinds as two mixture entries drawn 1:1, for
                  2 x `steps` steps: the specialists' examples together
  arm=resampled   joint, the entries drawn by temperature resampling, in proportion to
                  the square root of their sizes (data.size_temperature=2: 33% / 67%)
  arm=natural     joint, in proportion to their sizes (size_temperature=1: 19% / 81%)
  steps=<n>       the specialists' steps (default 100; the joint arms train twice that)
  accelerator     the larger variant for a GPU/TPU: batch 256, 1,000 specialist steps
  smoke           tiny random model (tests)
"""

from jaxembed.configs import common

VARIANTS = ("arm=B", "arm=balanced", "arm=resampled", "arm=natural",
            "arm=balanced,accelerator", "smoke,arm=resampled")
ARMS = ("A", "B", "balanced", "resampled", "natural")
KINDS = {"A": ("gloss_example",), "B": ("lemma_gloss",)}
TEMPERATURE = {"balanced": 0.0, "resampled": 2.0, "natural": 1.0}


def get_config(arg=None):
  args = common.parse_arg(arg, arm="A", steps=100, accelerator=False, smoke=False)
  if args.arm not in ARMS:
    raise ValueError(f"arm={args.arm!r}; valid: {', '.join(ARMS)}")
  if args.steps < 1:
    raise ValueError(f"steps={args.steps} must be at least 1")
  c = common.pair_loss_config(tiny=args.smoke)
  m = c.loss.matryoshka
  # The pair loss at the last layer's full width alone (1D Matryoshka at one dim).
  m.mode, m.dims = "mrl", ((32,) if args.smoke else (384,))
  steps = 8 if args.smoke else (1000 if args.accelerator else args.steps)
  if args.arm in KINDS:
    c.data.pair_kinds = KINDS[args.arm]
    c.train.steps = steps
  else:
    c.data.mixture = tuple({"source": "wordnet", "pair_kinds": kinds, "weight": 1.0}
                           for kinds in KINDS.values())
    c.data.size_temperature = TEMPERATURE[args.arm]
    c.train.steps = 2 * steps
  last = 2 if args.smoke else 6
  c.eval.layers, c.eval.dims = (last,), m.dims
  if args.accelerator:
    c.train.batch_size = 256
    c.optim.warmup_steps = 100
    c.train.checkpoint_every = 500
  elif not args.smoke:
    c.eval.wordnet_queries = c.eval.ood_queries = 500
    c.eval.polarity = c.eval.newsgroup = False
  return c
