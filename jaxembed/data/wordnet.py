"""WordNet 3.0 as embedding training pairs, held out by synset.

Reads the Princeton database files (`data.noun`, `data.verb`, `data.adj`, `data.adv`,
Debian package `wordnet-base`, /usr/share/wordnet). Each synset gives
  - (definition, example sentence) pairs, from the quoted examples in its gloss, and
  - (lemma, definition) pairs.
A stable hash of the synset id assigns it to training or to evaluation, so no
evaluation synset, and no evaluation text, ever appears in training.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib

from jaxembed.errors import DataError

DEFAULT_DIR = "/usr/share/wordnet"
FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
INSTALL_HINT = "install it with `apt-get install wordnet-base` or set data.wordnet_dir"

_QUOTED = re.compile(r'"([^"]+)"')
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers: able(p), galore(ip)


@dataclasses.dataclass(frozen=True)
class Synset:
  id: str
  lemmas: tuple[str, ...]
  definition: str
  examples: tuple[str, ...]
  lex_file: int = -1          # the lexicographer file (noun.animal, noun.artifact, ...)


def check_wordnet_dir(path: str, field: str = "data.wordnet_dir") -> None:
  if not os.path.isdir(path):
    raise DataError(f"{field}={path!r}: WordNet folder not found; {INSTALL_HINT}")
  missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise DataError(f"{field}={path!r}: WordNet files {missing} are missing; "
                    f"{INSTALL_HINT}")


def parse_line(line: str, pos: str) -> Synset | None:
  """One line of a data.* file; None for the licence header."""
  if line.startswith("  ") or not line.strip():
    return None
  head, sep, gloss = line.partition(" | ")
  if not sep:
    return None
  fields = head.split()
  n_words = int(fields[3], 16)
  words = fields[4:4 + 2 * n_words:2]
  lemmas = tuple(dict.fromkeys(_MARKER.sub("", w).replace("_", " ") for w in words))
  gloss = gloss.strip()
  examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
  definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
  if not definition:
    return None
  return Synset(f"{fields[0]}-{pos}", lemmas, definition, examples, int(fields[1]))


def read_synsets(wordnet_dir: str) -> list[Synset]:
  check_wordnet_dir(wordnet_dir)
  synsets = []
  for pos, name in FILES.items():
    path = os.path.join(wordnet_dir, name)
    with open(path, encoding="utf-8", errors="replace") as f:
      for lineno, line in enumerate(f, 1):
        try:
          s = parse_line(line, pos)
        except (IndexError, ValueError) as e:
          raise DataError(f"{path}:{lineno}: not a WordNet data line ({e})") from e
        if s is not None:
          synsets.append(s)
  return synsets


def is_held_out(synset_id: str, fraction: float, seed: int) -> bool:
  """A stable, platform-independent split by synset (crc32, not Python's hash)."""
  return zlib.crc32(f"{seed}:{synset_id}".encode()) % 100_000 < fraction * 100_000


# (definition, example) and (lemma, definition) pairs.
PAIR_KINDS = ("gloss_example", "lemma_gloss")


def make_pairs(synsets: list[Synset], *, holdout_fraction: float, seed: int,
               kinds: tuple[str, ...] = ("gloss_example", "lemma_gloss")):
  """Returns (train, test) lists of dicts {anchor, positive, synset, kind}.

  test holds (definition, example) pairs of held-out synsets only: the retrieval task
  is definition -> its examples. Training pairs that share any text with the test set
  are dropped, so a definition shared by two synsets cannot leak.
  """
  unknown = set(kinds) - set(PAIR_KINDS)
  if unknown:
    raise DataError(f"data.pair_kinds: unknown {sorted(unknown)}; valid: "
                    f"{list(PAIR_KINDS)}")
  train, test = [], []
  for s in synsets:
    held = is_held_out(s.id, holdout_fraction, seed)
    if held:
      test += [dict(anchor=s.definition, positive=e, synset=s.id, kind="gloss_example")
               for e in s.examples]
      continue
    if "gloss_example" in kinds:
      train += [dict(anchor=s.definition, positive=e, synset=s.id, kind="gloss_example")
                for e in s.examples]
    if "lemma_gloss" in kinds:
      train += [dict(anchor=l, positive=s.definition, synset=s.id, kind="lemma_gloss")
                for l in s.lemmas]
  test_texts = {p["anchor"] for p in test} | {p["positive"] for p in test}
  train = [p for p in train
           if p["anchor"] not in test_texts and p["positive"] not in test_texts]
  return train, test
