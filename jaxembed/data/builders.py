"""tensorflow-datasets builders over local files, written as array_record.

tfds ships no data here and its downloads need the network; these builders read files
already on disk and need no TensorFlow. grain reads the result through
`builder.as_data_source(split)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import zlib

import tensorflow_datasets as tfds

from jaxembed.data import wordnet
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


class WordNetPairs(tfds.core.GeneratorBasedBuilder):
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
  # The builder reads the dataset's metadata when constructed, so it is made under
  # the lock: one made while another process was still writing would see no splits.
  with _exclusive(data_dir, WordNetPairs.name):
    builder = WordNetPairs(wordnet_dir=wordnet_dir, holdout_fraction=holdout_fraction,
                           seed=seed, pair_kinds=pair_kinds, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def read_jsonl_pairs(path: str, field: str = "data.train_jsonl") -> list[dict]:
  """Records {anchor, positive[, negatives: [texts]]}, one JSON object per line.

  A bad record stops the run with its file and line: broken JSON or UTF-8, a missing
  or empty text, or a different number of negatives than the first record (batches
  have a fixed shape)."""
  if not os.path.isfile(path):
    raise DataError(f"{field}={path!r}: no such file")
  rows, k = [], None
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      if not raw.strip():
        continue
      try:
        rec = json.loads(raw.decode("utf-8"))
      except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from e
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: not a JSON object ({e.msg})") from e
      if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object with anchor and positive")
      for key in ("anchor", "positive"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
          raise DataError(f"{where}: field {key!r} is missing or empty")
      negs = rec.get("negatives", [])
      if not isinstance(negs, list) or not all(isinstance(n, str) and n.strip()
                                               for n in negs):
        raise DataError(f"{where}: 'negatives' must be a list of non-empty strings")
      if k is None:
        k = len(negs)
      elif len(negs) != k:
        raise DataError(f"{where}: {len(negs)} negatives where earlier records have {k}; "
                        "every record needs the same number")
      rows.append({"anchor": rec["anchor"], "positive": rec["positive"], "negatives": negs})
  if not rows:
    raise DataError(f"{field}={path!r}: the file holds no records")
  return rows


class JsonlPairs(tfds.core.GeneratorBasedBuilder):
  """Training pairs (with optional hard negatives) from a JSONL file. The config name
  is a fingerprint of the file, so an edited file is rebuilt, not reused."""

  name = "jsonl_pairs"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "anchor, positive, negatives from JSONL."}

  def __init__(self, *, path: str, **kwargs):
    self._path = os.path.abspath(path)
    st = os.stat(self._path)
    tag = zlib.crc32(f"{self._path}:{st.st_size}:{st.st_mtime_ns}".encode())
    super().__init__(config=tfds.core.BuilderConfig(name=f"f{tag:08x}"),
                     file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Pairs from a local JSONL file.",
        features=tfds.features.FeaturesDict({
            "anchor": tfds.features.Text(), "positive": tfds.features.Text(),
            "negatives": tfds.features.Sequence(tfds.features.Text())}))

  def _split_generators(self, dl_manager):
    del dl_manager
    rows = read_jsonl_pairs(self._path)
    return {"train": ((i, r) for i, r in enumerate(rows))}

  def _generate_examples(self, rows):  # required by the base class; unused
    yield from rows


def jsonl_pairs(*, path: str, tfds_dir: str) -> JsonlPairs:
  if not os.path.isfile(path):
    raise DataError(f"data.train_jsonl={path!r}: no such file")
  read_jsonl_pairs(path)  # validate before anything is written
  data_dir = os.path.expanduser(tfds_dir)
  with _exclusive(data_dir, JsonlPairs.name):
    builder = JsonlPairs(path=path, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def decode_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
