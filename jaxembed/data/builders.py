"""tensorflow-datasets builders over local files, written as array_record.

tfds ships no data here and its downloads need the network; these builders read files
already on disk and need no TensorFlow. grain reads the result through
`builder.as_data_source(split)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import zlib

import numpy as np
import tensorflow_datasets as tfds

from jaxembed.data import docstrings, foldoc, manpages, packaged, wordnet
from jaxembed.data.packaged import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from jaxembed.data.readers import read_beir, read_pairs, read_scored_pairs
from jaxembed.errors import DataError

_TEXT_FEATURES = ("anchor", "positive", "synset", "kind")


@contextlib.contextmanager
def _exclusive(data_dir: str, name: str):
  """One writer at a time per dataset (parallel test workers, several hosts on one
  file system); later ones find it prepared."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _prepared(data_dir: str, builder_cls, **kwargs):
  """The builder, its dataset written on first use. The builder reads the dataset's
  metadata when constructed, so it is made under the lock: one made while another
  process was still writing would see no splits."""
  with _exclusive(data_dir, builder_cls.name):
    builder = builder_cls(data_dir=data_dir, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


class _Builder(tfds.core.GeneratorBasedBuilder):
  """tfds' builder, saying what it does in the log. tfds prints "Downloading and
  preparing dataset ..." on stdout, wrong for files read from the disk and noise in
  a user's output."""

  def _log_download_bytes(self) -> None:
    logging.info("writing %s to %s", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("%s written to %s", self.name, self.data_dir)


class WordNetPairs(_Builder):
  """WordNet (definition, example) and (lemma, definition) pairs; 'test' is held out
  by synset. The config name encodes the split parameters, so changing them builds a
  new dataset instead of reusing a stale one."""

  name = "wordnet_pairs"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Pairs from WordNet 3.0 glosses, split by synset."}

  def __init__(self, *, wordnet_dir: str, holdout_fraction: float, seed: int,
               pair_kinds=("gloss_example", "lemma_gloss"), **kwargs):
    self._wordnet_dir = wordnet_dir
    self._holdout = float(holdout_fraction)
    self._seed = int(seed)
    self._kinds = tuple(sorted(pair_kinds))
    config = tfds.core.BuilderConfig(
        name=f"holdout{round(self._holdout * 1e5)}_seed{self._seed}_"
             + "_".join(k.split("_")[0] for k in self._kinds))
    super().__init__(config=config, file_format="array_record", **kwargs)
    # What a pickled copy (a grain worker process) is rebuilt from; it only reads.
    self._original_state = dict(kwargs, wordnet_dir=wordnet_dir,
                                holdout_fraction=holdout_fraction, seed=seed,
                                pair_kinds=pair_kinds)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="WordNet 3.0 definition/example/lemma pairs, held out by synset.",
        features=tfds.features.FeaturesDict(
            {k: tfds.features.Text() for k in _TEXT_FEATURES}),
        homepage="https://wordnet.princeton.edu/")

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    synsets = wordnet.read_synsets(self._wordnet_dir)
    train, test = wordnet.make_pairs(synsets, holdout_fraction=self._holdout,
                                     seed=self._seed, kinds=self._kinds)
    # Checked before anything is written, so a bad setting leaves no half dataset.
    for split, rows in (("train", train), ("test", test)):
      if not rows:
        raise DataError(
            f"WordNet split {split!r} is empty with data.holdout_fraction="
            f"{self._holdout} and data.pair_kinds={list(self._kinds)}; use a fraction "
            "strictly between 0 and 1")
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row


def wordnet_pairs(*, wordnet_dir: str, tfds_dir: str, holdout_fraction: float, seed: int,
                  pair_kinds=("gloss_example", "lemma_gloss")) -> WordNetPairs:
  """The prepared WordNet builder (built on first use, reused afterwards)."""
  wordnet.check_wordnet_dir(wordnet_dir)
  if not 0.0 < holdout_fraction < 1.0:
    raise DataError(f"data.holdout_fraction={holdout_fraction}: must be strictly "
                    "between 0 and 1")
  data_dir = os.path.expanduser(tfds_dir)
  return _prepared(data_dir, WordNetPairs, wordnet_dir=wordnet_dir,
                   holdout_fraction=holdout_fraction, seed=seed, pair_kinds=pair_kinds)


class LocalPairs(_Builder):
  """Training pairs (with optional hard negatives) made by a reader from local files.
  The config name is a fingerprint of the inputs, so a changed file is rebuilt, not
  reused."""

  name = "local_pairs"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "anchor, positive, negatives from local files."}

  def __init__(self, *, rows, fingerprint: str, **kwargs):
    self._rows = rows
    super().__init__(config=tfds.core.BuilderConfig(name=fingerprint),
                     file_format="array_record", **kwargs)
    # A pickled copy (a grain worker process) only reads what was written.
    self._original_state = dict(kwargs, rows=None, fingerprint=fingerprint)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Pairs from local files.",
        features=tfds.features.FeaturesDict({
            "anchor": tfds.features.Text(), "positive": tfds.features.Text(),
            "negatives": tfds.features.Sequence(tfds.features.Text())}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(self._rows)}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row


class LocalScoredPairs(LocalPairs):
  """Graded pairs (anchor, positive, score) from a local STS-format file, for the
  ranking objectives (CoSENT, AnglE)."""

  name = "local_scored_pairs"
  RELEASE_NOTES = {"1.0.0": "anchor, positive, score from a local file."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Graded pairs from a local file.",
        features=tfds.features.FeaturesDict({
            "anchor": tfds.features.Text(), "positive": tfds.features.Text(),
            "score": tfds.features.Scalar(dtype=np.float32)}))


def _fingerprint(*paths: str, extra: str = "") -> str:
  parts = [extra]
  for path in paths:
    st = os.stat(path)
    parts.append(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}")
  return f"f{zlib.crc32('|'.join(parts).encode()):08x}"


def local_pairs(rows: list[dict], *, fingerprint: str, tfds_dir: str) -> LocalPairs:
  """Writes `rows` (read and checked by the caller) as array_record, once."""
  return _prepared(os.path.expanduser(tfds_dir), LocalPairs, rows=rows,
                   fingerprint=fingerprint)


def pairs_file(*, path: str, tfds_dir: str, on_error: str = "reject",
               columns: str = "") -> LocalPairs:
  """Pairs / triplets / pairs with k negatives from a JSONL, CSV or TSV file
  (`columns`: the file's names for ours, see `readers.parse_columns`)."""
  rows, _ = read_pairs(path, on_error=on_error, columns=columns)
  extra = on_error + (f":{columns}" if columns else "")
  return local_pairs(rows, fingerprint=_fingerprint(path, extra=extra), tfds_dir=tfds_dir)


def scored_pairs_file(*, path: str, tfds_dir: str, on_error: str = "reject",
                      field: str = "data.train_file") -> LocalScoredPairs:
  """Graded pairs from a CSV / TSV / JSONL file with sentence1, sentence2 and score
  (the STS format `readers.read_scored_pairs` reads)."""
  rows, _ = read_scored_pairs(path, on_error=on_error, field=field)
  if len({score for _, _, score in rows}) < 2:
    raise DataError(f"{field}={path!r}: every pair has the score {rows[0][2]}; the "
                    "ranking losses (cosent, angle) learn from grades that differ")
  rows = [{"anchor": a, "positive": b, "score": np.float32(score)} for a, b, score in rows]
  return _prepared(os.path.expanduser(tfds_dir), LocalScoredPairs, rows=rows,
                   fingerprint=_fingerprint(path, extra=f"scored:{on_error}"))


def foldoc_pairs(*, foldoc_dir: str, tfds_dir: str) -> LocalPairs:
  """(term, first sentence) and (first sentence, rest) pairs of FOLDOC's computing
  dictionary (Debian's dict-foldoc; `jaxembed.data.foldoc`)."""
  foldoc.check_foldoc_dir(foldoc_dir)
  rows = foldoc.make_pairs(foldoc.read_entries(foldoc_dir))
  names = [os.path.join(foldoc_dir, n) for n in ("foldoc.index", "foldoc.dict.dz")]
  return local_pairs(rows, fingerprint=_fingerprint(
      *names, extra=f"foldoc:{foldoc.DOC_WORDS}"), tfds_dir=tfds_dir)


def beir_pairs(*, folder: str, split: str, tfds_dir: str,
               on_error: str = "reject") -> LocalPairs:
  """(query, relevant document) pairs of a BEIR folder's qrels/<split>.tsv."""
  queries, corpus, qrels = read_beir(folder, split, on_error=on_error)
  rows = [{"anchor": queries[q], "positive": corpus[d], "negatives": []}
          for q in sorted(qrels) for d, rel in sorted(qrels[q].items()) if rel > 0]
  if not rows:
    raise DataError(f"data.beir_dir={folder!r}: qrels/{split}.tsv has no relevant pair")
  names = ["corpus.jsonl", "queries.jsonl", os.path.join("qrels", f"{split}.tsv")]
  return local_pairs(rows, fingerprint=_fingerprint(
      *(os.path.join(folder, n) for n in names), extra=f"beir:{split}:{on_error}"),
      tfds_dir=tfds_dir)


def decode_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class PackagedText(_Builder):
  """Labelled texts that ship inside PyPI packages (gensim's test data): 'polarity'
  (Pang & Lee movie-review sentences, neg/pos) and 'newsgroup' (two 20-newsgroups
  classes, headers removed). Used for classification and clustering evaluation."""

  name = "packaged_text"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "polarity and newsgroup from gensim 4.4.0's test data."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="polarity"),
                     tfds.core.BuilderConfig(name="newsgroup")]

  def __init__(self, **kwargs):
    super().__init__(file_format="array_record", **kwargs)

  def _loader(self):
    return {"polarity": packaged.load_polarity,
            "newsgroup": packaged.load_newsgroup}[self.builder_config.name]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Labelled texts from gensim's test data.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    texts, labels, _ = self._loader()()
    return {"test": self._generate_examples(texts, labels)}

  def _generate_examples(self, texts, labels):
    for i, (text, label) in enumerate(zip(texts, labels)):
      yield i, {"text": text, "label": label}


class FashionMnist(_Builder):
  """Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist package."""

  name = "fashion_mnist_local"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "60,000 train and 10,000 test 28x28 images, 10 classes."}

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(file_format="array_record", **kwargs)
    self._original_state = dict(kwargs, source_dir=source_dir)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017).",
        features=tfds.features.FeaturesDict({
            # raw uint8 (the Image feature would need TensorFlow to encode PNGs)
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*load_fashion_mnist(split, self._source_dir))
            for split in ("train", "test")}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


OOD_SETS = ("manpages", "docstrings")


class OodRetrieval(_Builder):
  """Out-of-domain retrieval sets (short summary -> longer text) from real text no
  training mixture contains: 'manpages' (NAME summary -> DESCRIPTION of the Linux
  man-pages, Debian's manpages and manpages-dev) and 'docstrings' (first line -> the
  rest, Python's standard library). Evaluation only: one 'test' split."""

  name = "ood_retrieval"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "manpages (sections 2-7) and stdlib docstrings."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in OOD_SETS]

  def __init__(self, *, source_dir: str = "", **kwargs):
    self._source_dir = source_dir
    super().__init__(file_format="array_record", **kwargs)
    self._original_state = dict(kwargs, source_dir=source_dir)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Out-of-domain summary -> text retrieval pairs.",
        features=tfds.features.FeaturesDict(
            {k: tfds.features.Text() for k in ("anchor", "positive", "page")}))

  def _split_generators(self, dl_manager):
    del dl_manager
    if self.builder_config.name == "manpages":
      rows = manpages.read_pages(self._source_dir or manpages.DEFAULT_DIR)
    else:
      rows = docstrings.read_docstrings(self._source_dir or None)
    if not rows:
      raise DataError(f"the out-of-domain set {self.builder_config.name!r} read no "
                      f"pairs from {self._source_dir or 'its default folder'!r}")
    return {"test": self._generate_examples(rows)}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row


def ood_retrieval(name: str, *, tfds_dir: str, source_dir: str = "") -> OodRetrieval:
  """The prepared out-of-domain set `name` (see `OodRetrieval`). The manual pages'
  folder is checked first, so a missing package is named before anything is built;
  the docstrings depend on the running Python, so its version names the dataset."""
  if name not in OOD_SETS:
    raise DataError(f"out-of-domain set {name!r}; valid: {list(OOD_SETS)}")
  if name == "manpages":
    manpages.check_man_dir(source_dir or manpages.DEFAULT_DIR)
  data_dir = os.path.expanduser(tfds_dir)
  if name == "docstrings":   # stdlib text differs between Python versions
    data_dir = os.path.join(data_dir, f"py{sys.version_info[0]}{sys.version_info[1]}")
  return _prepared(data_dir, OodRetrieval, config=name, source_dir=source_dir)


def packaged_text(name: str, *, tfds_dir: str) -> PackagedText:
  """The prepared polarity / newsgroup builder."""
  if name not in ("polarity", "newsgroup"):
    raise DataError(f"packaged text set {name!r}; valid: ['polarity', 'newsgroup']")
  return _prepared(os.path.expanduser(tfds_dir), PackagedText, config=name)


def fashion_mnist(*, tfds_dir: str, source_dir: str | None = None) -> FashionMnist:
  """The prepared Fashion-MNIST builder (reads /usr/share/datasets/fashion-mnist)."""
  source_dir = source_dir or FASHION_MNIST_DIR
  load_fashion_mnist("test", source_dir)     # a missing package is named before building
  return _prepared(os.path.expanduser(tfds_dir), FashionMnist, source_dir=source_dir)
