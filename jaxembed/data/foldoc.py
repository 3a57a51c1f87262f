"""FOLDOC, the Free On-line Dictionary of Computing, as training pairs: technical text
(about 15,000 computing terms) that the WordNet pairs lack.

Reads the dictd database of Debian's `dict-foldoc` package (/usr/share/dictd/
foldoc.index and foldoc.dict.dz: a gzip-compatible dictzip file). Each entry gives
  - (term, the first sentence of its definition), and
  - (that first sentence, the rest of the definition: up to DOC_WORDS words),
with FOLDOC's markup removed: {cross references} keep their text, <category> tags,
[citations], (dates) and pronunciations /.../ go.
"""

from __future__ import annotations

import gzip
import os
import re

from jaxembed.errors import DataError

DEFAULT_DIR = "/usr/share/dictd"
INSTALL_HINT = "install it with `apt-get install dict-foldoc` or set data.foldoc_dir"
DOC_WORDS = 64
MIN_WORDS = 5
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(value: str) -> int:
  n = 0
  for ch in value:
    n = n * 64 + _B64.index(ch)
  return n


def check_foldoc_dir(path: str, field: str = "data.foldoc_dir") -> None:
  for name in ("foldoc.index", "foldoc.dict.dz"):
    if not os.path.isfile(os.path.join(path, name)):
      raise DataError(f"{field}={path!r}: {name} not found; {INSTALL_HINT}")


def clean(body: str) -> str:
  text = re.sub(r"\(?\b(?:https?|ftp)://\S+", " ", body)         # addresses
  text = re.sub(r"\[[^\]]*\]", " ", text)                  # citations, [{Jargon File}]
  text = re.sub(r"\(\d{4}-\d{2}-\d{2}\)", " ", text)        # revision dates
  text = re.sub(r"<[^>]*>", " ", text)                     # <category> tags
  text = re.sub(r"(?<!\w)/[^/\s][^/]{0,40}/(?!\w)", " ", text)   # pronunciations
  text = text.replace("{", "").replace("}", "")
  text = re.sub(r"^\s*\d+\.\s+", "", text)                 # "1. " of a first sense
  return " ".join(text.split())


def _first_sentence(text: str) -> tuple[str, str]:
  m = re.search(r"(?<=[a-z0-9\)\"'])\.\s+(?=[A-Z\"(])", text)
  if not m:
    return text, ""
  return text[:m.start() + 1], text[m.end():]


def read_entries(foldoc_dir: str = DEFAULT_DIR) -> list[tuple[str, str]]:
  """(term, cleaned definition) for every entry, in the index's order."""
  check_foldoc_dir(foldoc_dir)
  with gzip.open(os.path.join(foldoc_dir, "foldoc.dict.dz"), "rb") as f:
    data = f.read()
  entries = []
  with open(os.path.join(foldoc_dir, "foldoc.index"), encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      parts = line.rstrip("\n").split("\t")
      if len(parts) != 3:
        raise DataError(f"{foldoc_dir}/foldoc.index:{lineno}: not 'term<TAB>offset"
                        f"<TAB>length'")
      term, start, length = parts[0], _b64(parts[1]), _b64(parts[2])
      if term.startswith("00-database"):
        continue
      text = data[start:start + length].decode("utf-8", errors="replace")
      head, _, body = text.partition("\n")
      body = clean(body)
      if body:
        entries.append((head.strip() or term, body))
  return entries


def make_pairs(entries) -> list[dict]:
  """Training pairs {anchor, positive, negatives: []} (see the module's docstring);
  an entry whose text repeats an earlier one's adds nothing."""
  rows, seen = [], set()
  for term, body in entries:
    first, rest = _first_sentence(body)
    if first in seen:
      continue
    seen.add(first)
    if len(first.split()) >= MIN_WORDS:
      rows.append({"anchor": term, "positive": first, "negatives": []})
      rest_words = rest.split()
      if len(rest_words) >= MIN_WORDS:
        rows.append({"anchor": first, "positive": " ".join(rest_words[:DOC_WORDS]),
                     "negatives": []})
  return rows
