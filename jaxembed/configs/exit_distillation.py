"""Multi-exit self-distillation (MoSE, Gurioli et al. 2025): one arm of the study.

  python -m experiments.train --config=configs/exit_distillation.py:arm=self_distill --workdir=runs/sd
  python -m experiments.exit_distillation --out=runs/exit_distillation   # the study

all-MiniLM-L6-v2 at full width, exits at layers {2, 4, 6}, the pair loss (InfoNCE,
scale 20, in-batch negatives) on WordNet pairs, bfloat16 matmuls, batch 32, 80 steps.
Each exit is evaluated at width 384.

Arguments (comma-separated):
  arm=self_distill  InfoNCE at every exit (their mean) + the mean over the shallower
                    exits of KL(next deeper exit || exit) on in-batch score
                    distributions, the deeper one detached (loss.name=self_distillation)
  arm=exits         InfoNCE at every exit, no KL (matryoshka pairs (2|4|6, 384))
  arm=last_only     InfoNCE at the last layer only
  arm=weight_control  self_distill's loss with each KL term replaced by the exit's own
                    InfoNCE (loss.exit_teacher=none): the same extra weight on the
                    shallower exits, no deeper exit guiding them
  accelerator       the larger variant for a GPU/TPU: 2,000 steps of 256 pairs, every
                    WordNet pair kind, the full evaluation sets
  smoke             tiny random model (tests)
"""

from jaxembed.configs import common

VARIANTS = ("arm=exits", "arm=last_only", "arm=self_distill,accelerator",
            "smoke,arm=exits", "smoke,arm=last_only")
ARMS = ("self_distill", "exits", "last_only", "weight_control")
EXITS = (2, 4, 6)


def get_config(arg=None):
  args = common.parse_arg(arg, arm="self_distill", accelerator=False, smoke=False)
  if args.arm not in ARMS:
    raise ValueError(f"arm={args.arm!r}; valid: {', '.join(ARMS)}")
  c = common.pair_loss_config(tiny=args.smoke)
  exits, width = (EXITS, 384) if not args.smoke else ((1, 2), 32)
  c.train.steps = 80
  m = c.loss.matryoshka
  if args.arm in ("self_distill", "weight_control"):
    c.loss.name = "self_distillation"
    m.layers = exits
    c.loss.kl_weight = 1.0
    if args.arm == "weight_control":
      c.loss.exit_teacher = "none"
  elif args.arm == "exits":
    m.mode = "pairs"
    m.pairs = tuple((layer, width) for layer in exits)
  else:
    m.mode = "none"
  c.eval.layers, c.eval.dims = exits, (width,)
  c = common.study_scale(c, accelerator=args.accelerator, smoke=args.smoke)
  if args.smoke:
    c.train.steps = 8
  return c
