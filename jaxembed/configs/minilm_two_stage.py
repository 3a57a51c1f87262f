"""A two-stage recipe (config.stages): pairs first, then a blend with the teacher.

  python -m experiments.train --config=configs/minilm_two_stage.py --workdir=runs/two_stage

The shape of NV-Embed's two-stage tuning (Lee et al. 2024: retrieval pairs with
in-batch and hard negatives, then a blend of tasks) and of KaLM-Embedding's
pre-training then fine-tuning, on what this machine has: all-MiniLM-L6-v2 with the 2D
Matryoshka grid, bfloat16 matmuls.
  stage 1, "pairs": 300 steps of InfoNCE on WordNet's (definition, example) and
    (lemma, definition) pairs, lr 5e-5;
  stage 2, "blend": 100 steps from stage 1's weights with a fresh optimizer at lr
    2e-5: two thirds WordNet, one third FOLDOC computing-dictionary pairs, with the
    frozen pretrained model distilled into every cell and the full cell anchored to
    it (the default job's 'distill' recipe).
Stage 1 trains in <workdir>/stages/0-pairs/, stage 2 in the workdir itself (its
metrics.json: the grid before any training and after both stages). A rerun resumes
where it stopped, in either stage. This config shows the mechanism; it is not a
measured improvement over the one-stage default (see experiments/RESULTS.md).

Arguments: smoke (tiny random model, seconds: the tests).
"""

from jaxembed.configs import common

VARIANTS = ()


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False)
  c = common.base_config()
  pairs = {"name": "pairs", "train.steps": 300, "optim.learning_rate": 5e-5}
  blend = {"name": "blend", "train.steps": 100, "optim.learning_rate": 2e-5,
           "optim.warmup_steps": 10,
           "loss.distill.weight": 1.0, "loss.distill.anchor_weight": 10.0,
           "data.mixture": ({"source": "wordnet", "weight": 2.0},
                            {"source": "foldoc", "weight": 1.0})}
  if args.smoke:
    c = common.smoke(c)
    pairs.update({"train.steps": 12, "optim.learning_rate": 1e-3})
    blend.update({"train.steps": 8, "optim.learning_rate": 5e-4, "optim.warmup_steps": 2,
                  "data.mixture": ({"source": "wordnet"},)})
  c.stages = (pairs, blend)
  return c
