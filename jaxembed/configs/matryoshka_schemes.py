"""2D Matryoshka schemes at equal compute: the full grid, Starbucks' fixed pairs, 2DMSE's
sampling, and separately trained sub-models — one arm of the study.

  python -m experiments.train --config=configs/matryoshka_schemes.py:arm=starbucks --workdir=runs/sb
  python -m experiments.matryoshka_schemes --out=runs/matryoshka_schemes   # the study

all-MiniLM-L6-v2, the pair loss (InfoNCE, scale 20, in-batch negatives) on WordNet
pairs, bfloat16 matmuls, batch 32, 80 steps for every arm (the same data, the same
encoder passes), evaluated at the diagonal cells (1,16) (2,32) (3,64) (4,128) (5,256)
(6,384) — Starbucks' pairs for BERT-base halved in layers and width (Zhuang et al.
2024).

Arguments (comma-separated):
  arm=grid        every (layer, dim) cell of layers 1..6 x dims {16, ..., 384} (36
                  cells) from one encoder pass, weighted equally
  arm=grid_kl     the grid plus Starbucks' KL from each cell to the full model's
                  in-batch distribution (kl_weight 1): the grid with Starbucks' term
  arm=starbucks   the six diagonal pairs, plus KL from each to the full model's
                  in-batch distribution (kl_weight 1)
  arm=2dmse       2DMSE (Li et al. 2024): per step a random shallow layer and a random
                  dim, losses at (last, full), (last, d), (l, full), (l, d), plus the
                  KL alignment of layer l to the last layer (kl_weight 1)
  arm=separate,cell=<k>:<d>
                  one model trained at the cell (k, d) alone (the separately trained
                  sub-model; layers above k get no gradient and are not computed)
  arm=mrl         1D Matryoshka (Kusupati et al. 2022): the last layer at every dim
                  {16, ..., 384}, weighted equally; evaluated at (6, d) for every d
  arm=plain       InfoNCE at (6, 384) alone, evaluated truncated to every d (MRL's
                  baseline: the full-width model's prefixes)
  steps=<n>       train n steps instead of 80 (experiments/schemes_study.py: 400)
  accelerator     the larger variant for a GPU/TPU: 2,000 steps of 256 pairs, the full
                  evaluation sets
  smoke           tiny random model (tests)
"""

from jaxembed.configs import common

VARIANTS = ("arm=grid", "arm=grid_kl", "arm=2dmse", "arm=separate,cell=3:64,steps=400",
            "arm=starbucks,accelerator", "arm=mrl", "arm=plain", "smoke,arm=grid",
            "smoke,arm=2dmse", "smoke,arm=separate,cell=1:8", "smoke,arm=mrl")
ARMS = ("grid", "grid_kl", "starbucks", "2dmse", "separate", "mrl", "plain")
PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
SMOKE_PAIRS = ((1, 8), (2, 32))


def get_config(arg=None):
  args = common.parse_arg(arg, arm="grid", cell="", steps=0, accelerator=False,
                          smoke=False)
  if args.arm not in ARMS:
    raise ValueError(f"arm={args.arm!r}; valid: {', '.join(ARMS)}")
  c = common.pair_loss_config(tiny=args.smoke)
  pairs = SMOKE_PAIRS if args.smoke else PAIRS
  if args.steps < 0:
    raise ValueError(f"steps={args.steps} must be at least 1")
  c.train.steps = args.steps or (8 if args.smoke else 80)
  m = c.loss.matryoshka
  layers = tuple(l for l, _ in pairs)
  dims = tuple(d for _, d in pairs)
  if args.arm in ("grid", "grid_kl"):
    m.mode = "grid"
    m.layers, m.dims = layers, dims
    c.loss.kl_weight = 1.0 if args.arm == "grid_kl" else 0.0
  elif args.arm == "starbucks":
    m.mode = "pairs"
    m.pairs = pairs
    c.loss.kl_weight = 1.0
  elif args.arm == "2dmse":
    c.loss.name = "2dmse"
    m.dims = dims
    c.loss.kl_weight = 1.0
  elif args.arm in ("mrl", "plain"):
    last = layers[-1]
    m.mode = "mrl" if args.arm == "mrl" else "none"
    m.dims = dims
    pairs = tuple((last, d) for d in dims)
  else:
    if not args.cell:
      raise ValueError("arm=separate needs cell=<layer>:<dim>, e.g. cell=3:64")
    layer, _, dim = args.cell.partition(":")
    pairs = ((int(layer), int(dim)),)
    m.mode = "pairs"
    m.pairs = pairs
  c.eval.layers = tuple(sorted({l for l, _ in pairs}))
  c.eval.dims = tuple(sorted({d for _, d in pairs}))
  c = common.study_scale(c, accelerator=args.accelerator, smoke=args.smoke)
  return c
