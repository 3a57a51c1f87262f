"""Train and evaluate an embedding model (`jaxembed train`, `python -m experiments.train`).

  jaxembed train --config=minilm_wordnet_2d --workdir=runs/default
  python -m experiments.train --config=configs/minilm_wordnet_2d.py --workdir=runs/default

Rerunning the same command resumes from the workdir's latest checkpoint. SIGTERM saves
a checkpoint and exits with status 0. Config fields can be overridden from the command
line, e.g. --config.train.steps=100.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxembed import hostmem
from jaxembed.checkpoint import remove_partial_saves
from jaxembed.cli import define_distributed_flags, initialize_distributed, resolve_configs
from jaxembed.errors import JaxembedError

# Failures of the machine rather than of the program: reported in one line.
_SYSTEM_FAILURES = ("No space left on device", "RESOURCE_EXHAUSTED", "File too large",
                    "Read-only file system", "Permission denied", "Disk quota exceeded")

_CONFIG = None
_WORKDIR = None
_DEBUG = None


def define_flags() -> None:
  """Defines this command's flags, once: at import they would clash with the
  other commands' (every module of the package imports together)."""
  global _CONFIG, _WORKDIR, _DEBUG
  if _CONFIG is not None:
    return
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A config file (path.py[:args]) or a packaged config's name "
      "(`jaxembed configs` lists them; e.g. ood_ablation:smoke,arm=pairs).",
      lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
  define_distributed_flags()
  _DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of a failure, not one line.")
  flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
  """Keeps orbax's and tfds' INFO chatter out of the progress log (warnings pass).
  Unless --debug, the errors orbax's background writers and asyncio log while a save
  fails (a full disk: hundreds of lines of tracebacks) are dropped too: the failure
  reaches the run as an exception and is reported in one `error:` line."""
  NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/absl/")
  BACKGROUND = ("/orbax/", "/asyncio/")

  def __init__(self, debug: bool = False):
    super().__init__()
    self.debug = debug

  def filter(self, record):
    if (not self.debug and record.levelno == logging.ERROR
        and any(n in record.pathname for n in self.BACKGROUND)):
      return False
    return record.levelno >= logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def _quiet_closed_loops(unraisable, default=sys.unraisablehook) -> None:
  """tensorstore's writers still calling back into orbax's closed event loops after a
  failed save raise 'Event loop is closed' once per pending write: not the failure
  (reported in one line), so not printed (--debug prints them)."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
    return
  default(unraisable)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries(debug=_DEBUG.value))
  if not _DEBUG.value:
    sys.unraisablehook = _quiet_closed_loops
  from jaxembed.train.loop import StopNow, train_and_evaluate
  initialize_distributed()
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except StopNow as e:
    logging.warning("%s", e)
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except JaxembedError as e:
    if _DEBUG.value:
      raise
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except Exception as e:  # the disk, the filesystem: one line unless --debug
    text = str(e)
    if _DEBUG.value or not (isinstance(e, OSError) or any(m in text for m in _SYSTEM_FAILURES)):
      raise
    first = next((l for l in text.splitlines() if any(m in l for m in _SYSTEM_FAILURES)),
                 text.splitlines()[0] if text else type(e).__name__)
    where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
    print(f"error: writing the run failed{where}: {first.strip()[:300]} (--debug shows "
          "the traceback)", file=sys.stderr, flush=True)
    # The failed save's other writers go on until the interpreter stops (and would
    # recreate what is removed): remove the partial save, then stop them with it.
    remove_partial_saves(_WORKDIR.value)
    sys.stdout.flush()
    os._exit(1)


def parse_flags(argv):
  """absl's parser, with a one-line error for a bad --config override (a misspelt
  field otherwise ends in a three-part traceback)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, ValueError, flags.Error) as e:
    text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\'", "'")
    lines = [l.strip(" '") for l in text.splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):  # keep the cause, not the stack
      lines = [lines[0], lines[-1]]
    print("error: " + " ".join(lines), file=sys.stderr)
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    if overrides:
      print(f"  (command-line overrides: {' '.join(overrides)}; unknown fields are "
            "refused so that a typo is never silently ignored)", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  hostmem.reexec_if_needed()  # keep the step's scratch memory mapped (hostmem.py)
  define_flags()
  sys.argv = [sys.argv[0], *resolve_configs(sys.argv[1:])]
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
