"""The default recipe's ablation: each arm is the default job with what it ablates
changed, or the pair loss alone (`pairs`).

  python -m experiments.train --config=configs/ood_ablation.py:arm=distill --workdir=runs/d
  python -m experiments.ood_ablation --out=runs/ood_ablation   # every arm, three seeds

Arguments (comma-separated after the file name):
  arm=exact_teacher    the default job (configs/minilm_wordnet_2d.py)
  arm=loose_anchor     the default with a third of the anchor (weight 3)
  arm=split_teacher    batches of 64 pairs, the teacher terms weighted by dataset
                       (WordNet 0.2, FOLDOC 2)
  arm=refreshed        dropout on and the KL on single words too
  arm=free_words       that without re-estimating the exits' means after training
  arm=distill_centred  that with the anchor on single words too
  arm=distill          that without centred exits
  arm=distill_only     that without the pair loss (the teacher terms alone)
  arm=pairs            the pair loss alone, WordNet only (no teacher, no FOLDOC)
  smoke                the arm on a tiny random model (tests)
"""

from jaxembed.configs import common, minilm_wordnet_2d

VARIANTS = ("arm=pairs", "arm=distill", "arm=distill_only", "arm=distill_centred",
            "arm=free_words", "arm=refreshed", "arm=loose_anchor", "arm=split_teacher",
            "smoke,arm=split_teacher", "smoke,arm=distill_centred", "smoke,arm=pairs")

_REFRESHED = {"train.dropout": True, "loss.distill.kl_min_tokens": 0}
_FREE_WORDS = {**_REFRESHED, "model.refresh_exits_at_end": False}
_DISTILL_CENTRED = {**_FREE_WORDS, "loss.distill.anchor_min_tokens": 0}
_DISTILL = {**_DISTILL_CENTRED, "model.centred_exits": False}
# Each arm: the fields it sets on the default job (None: the pair loss alone).
ARMS = {
    "exact_teacher": {},
    "loose_anchor": {"loss.distill.anchor_weight": 3.0},
    "split_teacher": {"train.batch_size": 64, "data.mixture": (
        {"source": "wordnet", "weight": 2.0, "teacher_weight": 0.2},
        {"source": "foldoc", "weight": 1.0, "teacher_weight": 2.0})},
    "refreshed": _REFRESHED,
    "free_words": _FREE_WORDS,
    "distill_centred": _DISTILL_CENTRED,
    "distill": _DISTILL,
    "distill_only": {**_DISTILL, "loss.distill.pair_weight": 0.0},
    "pairs": None,
}


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, arm="exact_teacher")
  if args.arm not in ARMS:
    raise ValueError(f"arm={args.arm!r}; valid: {', '.join(ARMS)}")
  c = common.pair_loss_config(tiny=args.smoke)
  if ARMS[args.arm] is None:
    return c
  return common.override(minilm_wordnet_2d.default_recipe(c), ARMS[args.arm])
