"""2D Matryoshka fine-tuning of all-MiniLM-L6-v2 on WordNet pairs (the default job).

  python -m experiments.train --config=configs/minilm_wordnet_2d.py --workdir=runs/default

Starts from all-MiniLM-L6-v2's weights and trains every (layer, dim) cell of layers
1..6 x dims {32, 64, 128, 256, 384}, all cells from one encoder pass, in bfloat16
matmuls (float32 weights), 400 steps of 32 pairs packed into rows of 32 tokens
(data.pack_length). The recipe ('exact_teacher'):
InfoNCE (scale 20, in-batch negatives) on the pairs, plus distillation of the frozen
pretrained model into every cell (KL between the teacher's and the cell's in-batch
similarity distributions over the batch's texts of 5 tokens or more) and an anchor of
the full cell to the teacher (10 x (1 - cosine)) on the same texts: single words are
free of both teacher terms (loss.distill.anchor_min_tokens, kl_min_tokens) and left to
the pair loss; dropout off (train.dropout), so the student starts as the teacher
exactly; two thirds of the batches are WordNet pairs, one third FOLDOC
computing-dictionary pairs; every layer below the last is centred (its mean pooled
vector over 4,096 training texts, estimated before step 0, is subtracted:
model.centered_exits), and after the last step those means are estimated again on the
trained model and saved with it (model.refresh_exits_at_end). Evaluates
the grid before and after on held-out WordNet retrieval, out-of-domain retrieval
(manual pages, Python docstrings: never trained on), Lee, SimLex-999, WordSim-353,
and classification/clustering sets.
About 5 minutes on 2 CPU cores; see README.md and experiments/RESULTS.md.

Arguments (comma-separated after the file name):
  smoke                  tiny random model, seconds (tests)
  variant=starbucks      Starbucks' fixed (layer, dim) pairs instead of the full grid
                         (Zhuang et al. 2024): for BERT-base (2,32) (4,64) (6,128)
                         (8,256) (10,512) (12,768); halved in layers and width for this
                         6-layer, 384-wide model, with the KL term to the full model.
  variant=mrl            1D Matryoshka (Kusupati et al. 2022): dims at the last layer.
  recipe=loose_anchor    the default with the anchor at weight 3: more in domain at the
                         full size, less out of domain
  recipe=split_teacher   the default with batches of 64 pairs and the teacher terms
                         weighted by dataset (WordNet 0.2, FOLDOC 2): in domain at the
                         full size within about a point of the old recipe, less out
                         of domain
  recipe=refreshed       the default with dropout on and the KL on single words too
  recipe=free_words      that without the refresh: the exits keep the initial
                         model's means
  recipe=distill_centred free_words with the anchor on every text (single words too)
  recipe=distill         that without centred exits
  recipe=pairs           the pair loss alone, WordNet only (the default before the
                         out-of-domain evaluation showed it forgetting)
  recipe=distill_only    the teacher terms alone (loss.distill.pair_weight=0), uncentred
"""

from configs import common

# Arguments the config tests build, besides None and "smoke".
VARIANTS = ("variant=starbucks", "variant=mrl", "smoke,variant=starbucks",
            "recipe=pairs", "recipe=distill", "recipe=distill_only", "smoke,recipe=distill",
            "smoke,recipe=distill_centred", "recipe=distill_centred", "recipe=free_words",
            "smoke,recipe=refreshed", "recipe=refreshed", "smoke,recipe=exact_teacher",
            "recipe=loose_anchor", "recipe=split_teacher", "smoke,recipe=split_teacher")
# Each recipe and the one it builds on (it takes every setting of that one, then its
# own: see get_config); the first is the default.
PARENT = {"exact_teacher": "refreshed", "loose_anchor": "exact_teacher",
          "split_teacher": "exact_teacher",
          "refreshed": "free_words", "free_words": "distill_centred",
          "distill_centred": "distill", "distill": None, "pairs": None,
          "distill_only": "distill"}
RECIPES = tuple(PARENT)


def _lineage(recipe: str) -> set[str]:
  """`recipe` and every recipe it builds on."""
  out = set()
  while recipe is not None:
    out.add(recipe)
    recipe = PARENT[recipe]
  return out


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, variant="grid", recipe="")
  # The smoke model (tests) keeps the plain float32 pair loss unless a recipe is named.
  args.recipe = args.recipe or ("pairs" if args.smoke else RECIPES[0])
  c = common.base_config()
  if not args.smoke:
    c.model.dtype = "bfloat16"
    # The pairs are short (25 real tokens a pair in 64 padded slots): packed into rows
    # of 32 tokens, a multiple of 16 rows (two shapes in practice), the step takes 0.57
    # of its padded time (benchmarks/packing.py) for the same vectors.
    c.data.pack_length = 32
    c.data.pack_granule = 16
  if args.recipe not in RECIPES:
    raise ValueError(f"recipe={args.recipe!r}; valid: {', '.join(RECIPES)}")
  lineage = _lineage(args.recipe)
  if "distill" in lineage:
    # The frozen pretrained model teaches every cell its similarity structure, the full
    # cell stays anchored to it, and a third of the batches are computing text
    # (FOLDOC) that WordNet lacks.
    c.loss.distill.weight = 1.0
    c.loss.distill.anchor_weight = 10.0
    c.data.mixture = ({"source": "wordnet", "weight": 2.0},
                      {"source": "foldoc", "weight": 1.0})
  if "distill_only" in lineage:
    c.loss.distill.pair_weight = 0.0
  if "distill_centred" in lineage:
    # Each layer below the last minus its mean over the training texts (estimated
    # before step 0): the shallow layers' shared components no longer drown their
    # cosines, and the full model is unchanged.
    c.model.centered_exits = True
  if "free_words" in lineage:
    # The anchor holds texts of 5 tokens or more ([CLS] + 3 word pieces + [SEP]): the
    # pair loss may move single words (WordNet lemmas, FOLDOC terms), which lifts word
    # similarity at the full size without the out-of-domain cost of freeing sentences.
    c.loss.distill.anchor_min_tokens = 5
  if "refreshed" in lineage:
    # After the last step the layer means are estimated again on the trained model:
    # training moves the shallow layers' mean, and centring them by the initial model's
    # leaves a shared component in every vector.
    c.model.refresh_exits_at_end = True
  if "exact_teacher" in lineage:
    # Dropout off: the student starts as the teacher exactly, so the teacher terms start
    # at their optimum and move the model only as far as the pair loss and the shallow
    # cells ask; with dropout on, matching the deterministic teacher through dropped
    # units pulls the full model away from it (the anchor's 1 - cos starts at 0.04, and
    # the teacher alone, recipe=distill_only, lowers the full cell's docstrings).
    c.train.dropout = False
    # Single words are free of the KL too, not only of the anchor: the pair loss shapes
    # them (word similarity) while the teacher keeps every sentence's neighbourhood.
    c.loss.distill.kl_min_tokens = 5
  if "split_teacher" in lineage:
    # The teacher holds the computing text (FOLDOC, technical as manual pages and
    # docstrings are) at twice its weight and WordNet's at a fifth, and batches are twice
    # as large: the pair loss moves the full model on WordNet (definitions, examples,
    # words) while the teacher keeps it on technical text (RESULTS.md).
    c.train.batch_size = 64
    c.data.mixture = ({"source": "wordnet", "weight": 2.0, "teacher_weight": 0.2},
                      {"source": "foldoc", "weight": 1.0, "teacher_weight": 2.0})
  if "loose_anchor" in lineage:
    # A third of the anchor: the full model moves further toward the pairs (word
    # similarity, Lee) and gives back part of its docstring retrieval (RESULTS.md).
    c.loss.distill.anchor_weight = 3.0
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
