"""Evaluation data that ships inside PyPI packages (no download at run time).

gensim's test data (`gensim/test/test_data`) holds real human similarity judgements:
the Lee document-similarity ratings (Lee, Pincombe & Welsh 2005: 50 news documents,
50x50 mean ratings) and SimLex-999 (Hill, Reichart & Korhonen 2015).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import zlib

import numpy as np

try:
  from numpy._core.multiarray import _reconstruct
except ImportError:   # numpy < 2
  from numpy.core.multiarray import _reconstruct

from jaxembed.errors import DataError

# Captions of a Fashion-MNIST image (CLIP-style prompt templates), for training pairs
# and zero-shot prompts.
CAPTION_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.",
                     "a {}, a piece of clothing.", "a black and white photo of a {}.")


def gensim_test_data_dir() -> str:
  try:
    spec = importlib.util.find_spec("gensim")
  except ImportError:
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise DataError("gensim is not installed; its test data holds the evaluation's "
                    "Lee, SimLex-999, WordSim-353, polarity and newsgroup sets: "
                    "pip install 'jaxembed[eval]' (or turn those off: eval.lee, "
                    "eval.simlex, eval.wordsim, eval.polarity, eval.newsgroup)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data")
  if not os.path.isdir(path):
    raise DataError(f"{path} is missing from the gensim install; reinstall gensim")
  return path


def _need(path: str) -> str:
  if not os.path.isfile(path):
    raise DataError(f"{path} is missing; reinstall gensim==4.4.0")
  return path


def load_lee(data_dir: str | None = None):
  """Returns (documents, pairs): 50 texts and (i, j, rating) for the 1,225 pairs of
  the upper triangle of the rating matrix."""
  data_dir = data_dir or gensim_test_data_dir()
  with open(_need(os.path.join(data_dir, "lee.cor")), encoding="latin-1") as f:
    docs = [line.strip() for line in f if line.strip()]
  ratings = np.loadtxt(_need(os.path.join(data_dir, "similarities0-1.txt")))
  if ratings.shape != (len(docs), len(docs)):
    raise DataError(f"Lee ratings are {ratings.shape} for {len(docs)} documents")
  i, j = np.triu_indices(len(docs), k=1)
  return docs, list(zip(i.tolist(), j.tolist(), ratings[i, j].tolist()))


def load_simlex(data_dir: str | None = None):
  """Returns [(word1, word2, score)] for the 999 SimLex pairs."""
  data_dir = data_dir or gensim_test_data_dir()
  return _read_word_pairs(_need(os.path.join(data_dir, "simlex999.txt")))


def load_wordsim(data_dir: str | None = None):
  """Returns [(word1, word2, score)] for the 353 WordSim pairs (Finkelstein et al., 2002)."""
  data_dir = data_dir or gensim_test_data_dir()
  path = _need(os.path.join(data_dir, "wordsim353.tsv"))
  return _read_word_pairs(path)


def _read_word_pairs(path: str):
  rows = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if line.startswith("#") or not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      try:
        rows.append((parts[0], parts[1], float(parts[2])))
      except (IndexError, ValueError) as e:
        raise DataError(f"{path}:{lineno}: expected 'word1<TAB>word2<TAB>score'") from e
  return rows


def load_polarity(data_dir: str | None = None):
  """Returns (texts, labels, label_names): the 200 movie-review sentences of Pang & Lee
  (2005) shipped by gensim, as `__label__neg text` lines; labels 0=neg, 1=pos."""
  data_dir = data_dir or gensim_test_data_dir()
  path = _need(os.path.join(data_dir, "pang_lee_polarity.cor"))
  names = ["neg", "pos"]
  texts, labels = [], []
  with open(path, encoding="cp1252") as f:   # the file is Windows-1252
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      tag, _, text = line.strip().partition(" ")
      if tag.removeprefix("__label__") not in names or not text:
        raise DataError(f"{path}:{lineno}: expected '__label__neg|pos <text>'")
      texts.append(text)
      labels.append(names.index(tag.removeprefix("__label__")))
  return texts, labels, names


class _OldPickle(pickle.Unpickler):
  """The mini 20-newsgroups pickle was written by Python 2 with an old scikit-learn
  `Bunch`; only the few classes it needs are allowed (a dict stands in for Bunch)."""

  _ALLOWED = {("copy_reg", "_reconstructor"): ("copyreg", "_reconstructor"),
              ("__builtin__", "dict"): ("builtins", "dict"),
              ("__builtin__", "object"): ("builtins", "object"),
              ("numpy.core.multiarray", "_reconstruct"): None,
              ("numpy", "ndarray"): ("numpy", "ndarray"),
              ("numpy", "dtype"): ("numpy", "dtype")}

  def find_class(self, module, name):
    if name == "Bunch" and module.startswith("sklearn"):
      return dict
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"mini_newsgroup: refusing to load {module}.{name}")
    if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
      return _np_reconstruct()
    return super().find_class(*self._ALLOWED[(module, name)])


def _np_reconstruct():
  return _reconstruct


def strip_headers(post: str) -> str:
  """A news post without its header block (which names the newsgroup: a label leak)."""
  head, sep, body = post.partition("\n\n")
  return body.strip() if sep else post.strip()


def load_newsgroup(data_dir: str | None = None):
  """Returns (texts, labels, label_names): 200 posts from two 20-newsgroups classes
  (alt.atheism, sci.space), headers removed."""
  data_dir = data_dir or gensim_test_data_dir()
  path = _need(os.path.join(data_dir, "mini_newsgroup"))
  with open(path, "rb") as f:
    raw = f.read()
  try:
    bunch = _OldPickle(io.BytesIO(zlib.decompress(raw)), encoding="latin1").load()
  except (zlib.error, pickle.UnpicklingError, EOFError) as e:
    raise DataError(f"{path}: not the expected zlib-compressed pickle ({e})") from e
  texts = [strip_headers(t) for t in bunch["data"]]
  return texts, [int(t) for t in bunch["target"]], list(bunch["target_names"])


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_fashion_mnist(split: str = "train", data_dir: str = FASHION_MNIST_DIR):
  """Returns (images uint8 [n, 28, 28], labels int64 [n]) from the IDX files of Debian's
  dataset-fashion-mnist (Xiao, Rasul & Vollgraf, 2017)."""
  prefix = {"train": "train", "test": "t10k"}.get(split)
  if prefix is None:
    raise DataError(f"Fashion-MNIST split {split!r}; valid: ['train', 'test']")
  paths = [os.path.join(data_dir, f"{prefix}-{kind}-ubyte.gz")
           for kind in ("images-idx3", "labels-idx1")]
  for path in paths:
    if not os.path.isfile(path):
      raise DataError(f"{path} is missing; install it with "
                      "`apt-get install dataset-fashion-mnist`")
  images = _read_idx(paths[0], magic=2051, header=16)
  labels = _read_idx(paths[1], magic=2049, header=8)
  if len(images) != len(labels):
    raise DataError(f"{paths[0]}: {len(images)} images but {len(labels)} labels")
  return images, labels.astype(np.int64)


def _read_idx(path: str, magic: int, header: int) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  dims = data[3]
  got = int.from_bytes(data[:4], "big")
  if got != magic:
    raise DataError(f"{path}: IDX magic {got}, expected {magic}")
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
  if 4 + 4 * dims != header or len(data) - header != int(np.prod(shape)):
    raise DataError(f"{path}: truncated IDX file")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)
