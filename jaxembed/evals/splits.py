"""Fixed dev and test halves of every retrieval set, by query.

A study chooses on dev and reports on test: the numbers a choice was made on are never
the ones it is reported with. A query's half is a function of its text alone, the set's
name and a seed (SHA-256), so it never depends on which other queries a machine's copy
of the set holds (a newer manpages package adds pages; the halves of the old ones stay
put), and every corpus document stays searchable from either half.

The halves of the packaged sets are also stored (`experiments/splits/<set>.json`, by
`python -m experiments.splits`): a short hash of each query, so a drift (a set whose
texts changed) is seen, and a reader can check which half a reported number is on.
"""

from __future__ import annotations

import hashlib

SPLITS = ("all", "dev", "test")


def half(text: str, set_name: str, seed: int = 0) -> str:
  """'dev' or 'test': the half query `text` of set `set_name` belongs to."""
  digest = hashlib.sha256(f"{seed}\0{set_name}\0{text}".encode()).digest()
  return "dev" if digest[0] % 2 == 0 else "test"


def query_hash(text: str) -> str:
  """The short hash a stored split lists a query by."""
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def keep(text: str, set_name: str, split: str, seed: int = 0) -> bool:
  """Whether query `text` belongs to `split` ('all' keeps every query)."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; valid: {list(SPLITS)}")
  return split == "all" or half(text, set_name, seed) == split


def stored_split(queries, set_name: str, seed: int = 0) -> dict:
  """What `experiments/splits/<set>.json` holds for a set's queries."""
  out = {"set": set_name, "seed": seed, "dev": [], "test": []}
  for q in sorted(set(queries)):
    out[half(q, set_name, seed)].append(query_hash(q))
  return out
