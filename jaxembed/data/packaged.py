"""Evaluation data that ships inside PyPI packages (no download at run time).

gensim's test data (`gensim/test/test_data`) holds real human similarity judgements:
the Lee document-similarity ratings (Lee, Pincombe & Welsh 2005: 50 news documents,
50x50 mean ratings) and SimLex-999 (Hill, Reichart & Korhonen 2015).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from jaxembed.errors import DataError


def gensim_test_data_dir() -> str:
  spec = importlib.util.find_spec("gensim")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("gensim is not installed; its test data holds the Lee and "
                    "SimLex-999 sets: `pip install gensim==4.4.0`")
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
  rows = []
  path = _need(os.path.join(data_dir, "simlex999.txt"))
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
