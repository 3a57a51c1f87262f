"""The default recipe on all-mpnet-base-v2 (MPNet-base: 12 layers, width 768), fully
fine-tuned over its (layer, dim) grid.

  scripts/fetch_weights.sh all-mpnet-base-v2
  python -m experiments.train --config=configs/mpnet_wordnet_2d.py --workdir=runs/mpnet

Cells: layers {2, 4, ..., 12} x dims {32, 64, ..., 768}, one encoder pass. The loss is
the default job's (configs/minilm_wordnet_2d.py): InfoNCE on WordNet and FOLDOC pairs,
the frozen pretrained model's KL on every cell and its anchor on the full cell,
centred shallow exits. On 2 CPU cores, 150 steps of 16 pairs (MPNet-base costs about
eight times MiniLM's compute a token); `accelerator`: 2,000 steps of 256 pairs.

Arguments: smoke (2 steps of the real model, small batches and evaluation: tests),
accelerator.
"""

from jaxembed.configs import common
from jaxembed.configs.minilm_wordnet_2d import default_recipe

MPNET = "weights:all-mpnet-base-v2"
LAYERS = (2, 4, 6, 8, 10, 12)
DIMS = (32, 64, 128, 256, 512, 768)


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, accelerator=False)
  c = default_recipe(common.pair_loss_config())
  c.model.path = MPNET
  c.loss.matryoshka.layers = c.eval.layers = LAYERS
  c.loss.matryoshka.dims = c.eval.dims = DIMS
  c.train.steps, c.train.batch_size = 150, 16
  c.optim.warmup_steps = 15
  c.eval.wordnet_queries = c.eval.ood_queries = 500
  c.eval.polarity = c.eval.newsgroup = False
  if args.accelerator:
    c.train.steps, c.train.batch_size = 2000, 256
    c.optim.warmup_steps = 100
    c.eval.wordnet_queries = c.eval.ood_queries = 0
    c.eval.polarity = c.eval.newsgroup = True
  if args.smoke:
    c.train.steps, c.train.batch_size = 2, 4
    c.train.checkpoint_every = c.train.log_every = 1
    c.data.max_train_examples = 64
    c.data.seq_len = c.data.pack_length = 16
    c.model.centring_texts = 32
    c.loss.matryoshka.layers = c.eval.layers = (2, 12)
    c.loss.matryoshka.dims = c.eval.dims = (32, 768)
    c.eval.wordnet_queries = 16
    c.eval.max_length = 16
    c.eval.lee = c.eval.simlex = c.eval.wordsim = False
    c.eval.ood = ()
  return c
