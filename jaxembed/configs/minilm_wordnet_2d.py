"""2D Matryoshka fine-tuning of all-MiniLM-L6-v2 on WordNet and FOLDOC pairs (the
default job).

  python -m experiments.train --config=configs/minilm_wordnet_2d.py --workdir=runs/default

Every (layer, dim) cell of layers 1..6 x dims {32, ..., 384} from one encoder pass,
400 steps of 32 pairs. The loss: InfoNCE on the pairs, plus the frozen pretrained model
teaching every cell (KL between in-batch similarity distributions) and anchoring the
full cell (10 x (1 - cosine)), both on texts of 5 tokens or more. Shallow layers are
centred by their mean pooled vector, re-estimated after the last step. The recipe and
its ablation (configs/ood_ablation.py): experiments/notes/2026-12-default-recipe.md;
reported on test halves with fresh seeds: experiments/RESULTS.md.

Arguments (comma-separated after the file name):
  smoke              this recipe on a tiny random model, seconds (tests)
  variant=starbucks  Starbucks' fixed (layer, dim) pairs, halved for this model, with
                     the KL term to the full model
  variant=mrl        1D Matryoshka: dims at the last layer only
  variant=pairs      the pair loss alone on the same data, steps, batch and dropout
                     (no teacher terms, no centred exits): the recipe's matched
                     baseline (experiments/ood_claim.py)
"""

from jaxembed.configs import common

# Arguments the config tests build, besides None and "smoke".
VARIANTS = ("variant=starbucks", "variant=mrl", "smoke,variant=starbucks", "variant=pairs")


def default_recipe(c):
  """The default's teacher terms, data mixture and exits on a pair-loss config."""
  c.loss.distill.weight = 1.0            # KL to the frozen pretrained model, every cell
  c.loss.distill.anchor_weight = 10.0    # 1 - cos(full cell, teacher)
  c.loss.distill.anchor_min_tokens = 5   # single words are left to the pair loss
  c.loss.distill.kl_min_tokens = 5
  c.data.mixture = ({"source": "wordnet", "weight": 2.0},
                    {"source": "foldoc", "weight": 1.0})
  c.model.centred_exits = True          # layers 1..5 minus their mean pooled vector
  c.model.refresh_exits_at_end = True    # those means re-estimated on the trained model
  c.train.dropout = False                # the student starts as the teacher exactly
  return c


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, variant="grid")
  c = default_recipe(common.pair_loss_config(tiny=args.smoke))
  if args.variant == "starbucks":
    c.loss.matryoshka.mode = "pairs"
    c.loss.matryoshka.pairs = (((1, 16), (2, 32)) if args.smoke else
                               ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)))
    c.loss.kl_weight = 1.0
  elif args.variant == "mrl":
    c.loss.matryoshka.mode = "mrl"
  elif args.variant == "pairs":
    c.loss.distill.weight = c.loss.distill.anchor_weight = 0.0
    c.model.centred_exits = c.model.refresh_exits_at_end = False
  elif args.variant != "grid":
    raise ValueError(f"variant={args.variant!r}; valid: grid, starbucks, mrl, pairs")
  return c
