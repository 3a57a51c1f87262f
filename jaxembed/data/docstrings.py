"""Python docstrings as an out-of-domain retrieval set: a docstring's first line (its
summary: "Return the canonical path of the specified filename") retrieves the rest of
it.

Read with `ast` from the source files of the running Python's standard library (no
module is imported, so nothing runs); tests, IDLE, tkinter, lib2to3 and ensurepip are
skipped. The set depends only on the Python version (3.11 gives about 2,700 pairs),
and no training mixture contains it (a test checks).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig

from jaxembed.errors import DataError

SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "lib2to3", "ensurepip", "turtledemo",
             "site-packages", "dist-packages", "__pycache__", "config-3"}
DOC_WORDS = 64
MIN_SUMMARY_WORDS = 4
MIN_BODY_WORDS = 12
_SIGNATURE = re.compile(r"^[\w.]+\(|->")
_PARAM_LIST = re.compile(r"^\s*(:param|:type|:returns?:|:rtype:|Args:|Returns:|Raises:)")


def stdlib_dir() -> str:
  return sysconfig.get_paths()["stdlib"]


def split_docstring(doc: str) -> tuple[str, str] | None:
  """(summary, body) of a docstring whose first paragraph is one or two lines of prose
  (not a call signature) and whose body has some prose; None otherwise."""
  paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
  if len(paragraphs) < 2 or paragraphs[0].count("\n") > 1:
    return None
  summary = " ".join(paragraphs[0].split())
  if (len(summary.split()) < MIN_SUMMARY_WORDS or summary.startswith((">>>", ".."))
      or _SIGNATURE.search(summary)):
    return None
  lines = [l for l in "\n".join(paragraphs[1:]).splitlines()
           if not l.strip().startswith(">>>")]
  body_words = []
  for line in lines:
    if _PARAM_LIST.match(line):
      break
    body_words += line.split()
  if len(body_words) < MIN_BODY_WORDS:
    return None
  return summary, " ".join(body_words[:DOC_WORDS])


def _files(root: str):
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in SKIP_DIRS and not d.startswith(("config-", "test")))
    for name in sorted(filenames):
      if name.endswith(".py") and not name.startswith("test_"):
        yield os.path.join(dirpath, name)


def read_docstrings(root: str | None = None) -> list[dict[str, str]]:
  """{anchor: summary, positive: body, page: module:qualified name} for every module,
  class and function docstring that splits (see `split_docstring`), in file order;
  summaries and bodies that occur twice are kept once (the first)."""
  root = root or stdlib_dir()
  if not os.path.isdir(root):
    raise DataError(f"{root!r}: the Python standard library's source folder is missing")
  rows, seen = [], set()
  for path in _files(root):
    try:
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue   # a few files are deliberately broken or not UTF-8
    module = os.path.relpath(path, root).removesuffix(".py").replace(os.sep, ".")
    for node, qualname in _documented(tree, module):
      doc = ast.get_docstring(node, clean=True)
      pair = split_docstring(doc) if doc else None
      if pair is None or pair[0] in seen or pair[1] in seen:
        continue
      seen.update(pair)
      rows.append({"anchor": pair[0], "positive": pair[1], "page": qualname})
  return rows


def _documented(tree, prefix):
  yield tree, prefix
  stack = [(tree, prefix)]
  while stack:
    node, name = stack.pop(0)
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        qual = f"{name}.{child.name}"
        yield child, qual
        stack.append((child, qual))
