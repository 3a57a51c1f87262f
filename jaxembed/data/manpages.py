"""Manual pages as an out-of-domain retrieval set: each page's NAME summary (the text
after `\\-`: "open and possibly create a file") retrieves the start of its DESCRIPTION
section.

Reads the roff sources of Debian's `manpages` and `manpages-dev` packages (sections
2-7 of the Linux man-pages project) under /usr/share/man. The text is technical prose
about system calls, library functions, file formats and conventions: nothing the
training mixtures (WordNet glosses, text files) contain, and kept out of them by a
test. Pages that only include another (`.so`) are skipped, so each page counts once.
"""

from __future__ import annotations

import gzip
import os
import re

from jaxembed.errors import DataError

DEFAULT_DIR = "/usr/share/man"
SECTIONS = ("man2", "man3", "man4", "man5", "man7")
INSTALL_HINT = "install them with `apt-get install manpages manpages-dev`"
DOC_WORDS = 64            # a document is the first this many words of DESCRIPTION

_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_NAMED = {"em": "-", "en": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
          "oq": "'", "cq": "'", "bu": "*", "ti": "~", "ha": "^", "mu": "x",
          "co": "(c)", "rg": "(R)", "tm": "(TM)", "<=": "<=", ">=": ">=", "->": "->",
          "<-": "<-", "!=": "!=", "bv": "|", "lh": "", "rh": "", "ga": "`",
          "pl": "+", "mi": "-", "eq": "=", "sl": "/", "rs": "\\", "at": "@", "sh": "#"}
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}


def check_man_dir(path: str, field: str = "eval.man_dir") -> None:
  if not os.path.isdir(os.path.join(path, "man2")):
    raise DataError(f"{field}={path!r}: no manual pages (man2) there; {INSTALL_HINT}")


def _escapes(text: str) -> str:
  text = _FONT.sub("", text)
  text = re.sub(r"\\\(([^\s]{2})", lambda m: _NAMED.get(m.group(1), ""), text)
  text = re.sub(r"\\\[([^\]]*)\]", lambda m: _NAMED.get(m.group(1), ""), text)
  text = re.sub(r"\\[*n]\(?\[?[A-Za-z]+\]?", "", text)        # strings, registers
  text = re.sub(r"\\s[-+]?\d", "", text)                      # size changes
  text = (text.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")
          .replace("\\ ", " ").replace("\\~", " ").replace("\\0", " ")
          .replace("\\|", "").replace("\\^", "").replace("\\c", "")
          .replace("\\:", "").replace("\\%", "").replace("\\/", "").replace("\\,", ""))
  return text


def _args(rest: str) -> list[str]:
  """A macro's arguments: whitespace-separated, "quoted strings" kept whole."""
  return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
          for a in re.findall(r'"[^"]*"|\S+', rest)]


def roff_to_sections(source: str) -> dict[str, str]:
  """{section title: plain text}; roff requests reduced to their text, font changes
  and escapes removed. Enough for the man-pages project's sources, not a roff."""
  sections: dict[str, list[str]] = {}
  current = None
  for raw in source.replace("\\\n", "").splitlines():
    if raw.startswith(('.\\"', "'\\\"", '\\"')):
      continue
    is_request = raw.startswith((".", "'"))
    name, _, rest = raw[1:].strip().partition(" ") if is_request else ("", "", "")
    if name == "SH":
      current = " ".join(_args(rest)).upper()
      sections.setdefault(current, [])
      continue
    if current is None:
      continue
    if not is_request:
      line = raw
    elif name in ("B", "I", "SM", "SB"):
      line = " ".join(_args(rest))
    elif name in _ALTERNATING:
      line = "".join(_args(rest))
    else:
      line = ""          # every other request (paragraphs, fills, links) is a break
    sections[current].append(_escapes(line))
  return {k: re.sub(r"\s+", " ", " ".join(v)).strip() for k, v in sections.items()}


def read_page(path: str) -> tuple[str, str] | None:
  """(summary, description) of one page, or None for a `.so` include or a page
  without both sections."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace") as f:
    source = f.read()
  body = [l for l in source.splitlines() if l.strip() and not l.startswith('.\\"')]
  if body and body[0].startswith(".so "):
    return None
  if not re.search(r'^\.TH .*Linux man-pages', source, re.M):
    return None                       # another package's page in the same folder
  sections = roff_to_sections(source)
  name, description = sections.get("NAME", ""), sections.get("DESCRIPTION", "")
  summary = name.split(" - ", 1)[1].strip() if " - " in name else ""
  if not summary or not description:
    return None
  return summary, " ".join(description.split()[:DOC_WORDS])


def read_pages(man_dir: str = DEFAULT_DIR) -> list[dict[str, str]]:
  """Every page of sections 2-7 as {anchor: summary, positive: description, page},
  in a fixed order (sorted by file name)."""
  check_man_dir(man_dir)
  rows = []
  for section in SECTIONS:
    folder = os.path.join(man_dir, section)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      path = os.path.join(folder, name)
      if not os.path.isfile(path) or os.path.islink(path):
        continue
      page = read_page(path)
      if page is not None:
        rows.append({"anchor": page[0], "positive": page[1],
                     "page": f"{section}/{name.removesuffix('.gz')}"})
  return rows
