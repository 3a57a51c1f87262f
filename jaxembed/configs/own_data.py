"""Fine-tune all-MiniLM-L6-v2 on your own pairs, evaluated only on what you name.

  python -m experiments.train \\
      --config=configs/own_data.py:train=pairs.jsonl,sts=my_sts.csv,steps=20 \\
      --workdir=runs/mine

The training file is JSONL, CSV or TSV with `anchor` and `positive` columns (and
optionally `negative`, `negative_1`..`negative_k` or a JSON list `negatives`); other
column names are mapped with `--config.data.columns='anchor=question,positive=answer'`.
Nothing packaged is built or evaluated (no WordNet, Lee, SimLex, ...): the grid is
scored on the files you give, before and after training.

Arguments (comma-separated after the file name):
  train=PATH     the training pairs (required)
  sts=PATH       a scored-pair file (sentence1, sentence2, score) to evaluate on
  beir=DIR       a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)
  steps=N        training steps (default 200); the warmup is clamped to them
  batch=N        pairs per step (default 32)
  smoke          a tiny random model (tests)
"""

from jaxembed.configs import common

# Arguments the config tests build, besides None and "smoke" (paths need not exist
# to build the config).
VARIANTS = ("train=pairs.jsonl,sts=sts.csv", "train=pairs.csv,beir=beir,steps=20")


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, train="", sts="", beir="", steps=200,
                          batch=32)
  c = common.base_config()
  c.data.source = "file"
  c.data.train_file = args.train
  c.train.steps = args.steps
  c.train.batch_size = args.batch
  c.train.checkpoint_every = max(args.steps // 2, 1)
  c.train.log_every = max(min(10, args.steps // 4), 1)
  if args.smoke:
    c = common.smoke(c)
    c.train.steps = args.steps if arg and "steps=" in arg else 8
    c.train.checkpoint_every = c.train.steps
  # Only the user's evaluations (after smoke, which turns packaged ones on).
  c.eval.wordnet_queries = 0
  c.eval.lee = c.eval.simlex = c.eval.wordsim = False
  c.eval.polarity = c.eval.newsgroup = False
  c.eval.ood = ()
  c.eval.sts_files = (args.sts,) if args.sts else ()
  c.eval.beir_dir = args.beir
  return c
