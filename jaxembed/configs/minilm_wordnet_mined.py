"""2D Matryoshka fine-tuning of all-MiniLM-L6-v2 on WordNet pairs with mined hard
negatives (one per pair), InfoNCE over in-batch and hard negatives.

  python -m experiments.mine --out=runs/mined/wordnet_negatives.jsonl
  python -m experiments.train --config=configs/minilm_wordnet_mined.py --workdir=runs/mined

The first command mines negatives for 20,000 WordNet training pairs (definition ->
example) with the pretrained model (ranks 3..50, at least 0.05 below the positive's
cosine); the second trains on them and evaluates the (layer x dim) grid on the held-out
synsets, as configs/minilm_wordnet_2d.py does.

Arguments: smoke (tiny random model; its data.train_file must be set by the caller).
"""

from jaxembed.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False)
  c = common.base_config()
  c.data.source = "file"
  c.data.train_file = "runs/mined/wordnet_negatives.jsonl"
  c.train.batch_size = 24          # 24 anchors, 48 candidates: as costly as 32 pairs
  if args.smoke:
    c = common.smoke(c)
  return c
