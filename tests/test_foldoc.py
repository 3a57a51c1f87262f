"""FOLDOC (the computing dictionary) as a training source: the dictd database read
back, its markup removed, its pairs, and the mixture entry {'source': 'foldoc'}."""

import gzip
import re

import pytest

from jaxembed.data import builders, foldoc, pipeline
from jaxembed.errors import DataError
from jaxembed.train import inputs, sources

ENTRIES = {
    "inode": ("inode\n\n   <file system> A data structure holding information about "
              "files in a {Unix} {file system}.  There is an inode for each file "
              "and a file is identified by its inode number.\n\n   (1996-02-20)\n\n"),
    "alt": ("alt\n\n   <character> /awlt/ 1. The alt {modifier key} on many "
            "{keyboards}, see [{Jargon File}].\n\n"),
    "00-database-info": "00-database-info\n   This file was converted ...\n",
}


def _b64(n: int) -> str:
  out = ""
  while True:
    out = foldoc._B64[n % 64] + out
    n //= 64
    if not n:
      return out


def write_dictd(folder):
  data, index = b"", []
  for term, text in ENTRIES.items():
    raw = text.encode()
    index.append(f"{term}\t{_b64(len(data))}\t{_b64(len(raw))}")
    data += raw
  (folder / "foldoc.index").write_text("\n".join(sorted(index)) + "\n")
  with gzip.open(folder / "foldoc.dict.dz", "wb") as f:
    f.write(data)


def test_a_dictd_database_reads_back_without_markup(tmp_path):
  write_dictd(tmp_path)
  entries = dict(foldoc.read_entries(str(tmp_path)))
  assert entries == {
      "inode": "A data structure holding information about files in a Unix file "
               "system. There is an inode for each file and a file is identified by "
               "its inode number.",
      "alt": "The alt modifier key on many keyboards, see ."}
  rows = foldoc.make_pairs(foldoc.read_entries(str(tmp_path)))
  assert rows == [
      {"anchor": "alt", "positive": "The alt modifier key on many keyboards, see .",
       "negatives": []},
      {"anchor": "inode", "positive": "A data structure holding information about files "
       "in a Unix file system.", "negatives": []},
      {"anchor": "A data structure holding information about files in a Unix file "
       "system.", "positive": "There is an inode for each file and a file is "
       "identified by its inode number.", "negatives": []}]


def test_a_missing_dictionary_is_named(tmp_path):
  with pytest.raises(DataError, match="data.foldoc_dir.*apt-get install dict-foldoc"):
    foldoc.read_entries(str(tmp_path))


def test_the_installed_dictionary_is_a_mixture_source(tfds_dir, smoke_config):
  rows = foldoc.make_pairs(foldoc.read_entries())
  assert len(rows) > 10_000
  texts = [t for r in rows for t in (r["anchor"], r["positive"])]
  assert not any(re.search(r"<[a-z][a-z ]*>", t) for t in texts)    # no <category>
  assert not any("{" in r["positive"] for r in rows)   # (a few terms are "{...}")
  config = smoke_config(**{"data.mixture": ({"source": "wordnet", "weight": 2.0},
                                            {"source": "foldoc"})})
  components = inputs.mixture_components(config.data)
  assert [c["source"] for c in components] == ["wordnet", "foldoc"]
  source = inputs.train_source(config.data, components[1], sources.Context(config.data))
  built = pipeline.as_numpy_records(source)
  assert sorted((r["anchor"], r["positive"]) for r in built) == sorted(
      (r["anchor"], r["positive"]) for r in rows)      # (tfds shuffles when writing)
  assert builders.foldoc_pairs(foldoc_dir=foldoc.DEFAULT_DIR, tfds_dir=tfds_dir)
