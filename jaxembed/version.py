"""The installed jaxembed version and, for a git checkout, the commit it runs from:
what a workdir records next to its config (`version.json`)."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata

import jax


def _installed_version() -> str:
  try:
    return metadata.version("jaxembed")
  except metadata.PackageNotFoundError:   # a source tree on sys.path, not installed
    return "0+unknown"


__version__ = _installed_version()


def _git(*args: str) -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                         timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git_commit() -> str | None:
  """HEAD of the checkout this package is imported from ('-dirty' if tracked files
  differ from it), or None for an installed wheel: a checkout that merely contains
  the install (a venv inside a repository) does not count."""
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  top = _git("rev-parse", "--show-toplevel")
  if top is None or os.path.realpath(top) != os.path.realpath(package_root):
    return None
  sha = _git("rev-parse", "HEAD")
  if sha is None:
    return None
  dirty = _git("status", "--porcelain", "--untracked-files=no")
  return sha + ("-dirty" if dirty else "")


def provenance() -> dict:
  return {"jaxembed": __version__, "commit": git_commit(), "jax": jax.__version__}
