"""`jaxembed <command>`: what an installed jaxembed runs (no source tree needed).

  jaxembed train --config=minilm_wordnet_2d:smoke --workdir=runs/smoke
  jaxembed export --workdir=runs/smoke --out=exported/smoke
  jaxembed encode --model=runs/smoke --input=corpus.txt --out=emb/
  jaxembed merge --workdirs=runs/a,runs/b --out=merged/ab
  jaxembed configs                      # the packaged configs, one per line

`--config` takes a config file (`path.py[:args]`) or the name of a config shipped in
the package (`jaxembed/configs/<name>.py`), e.g. `ood_ablation:smoke,arm=pairs`.
`python -m jaxembed <command>` is the same. `jaxembed <command> --help` lists a
command's flags.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import flags

COMMANDS = {"train": ("jaxembed.cli.train", "train and evaluate a model from a config"),
            "export": ("jaxembed.cli.export",
                       "write a trained model as a sentence-transformers or Flax folder"),
            "encode": ("jaxembed.cli.encode",
                       "embed a corpus (text or JSONL) into one array, resumably"),
            "merge": ("jaxembed.cli.merge", "merge runs fine-tuned from one model"),
            "configs": (None, "list the configs shipped in the package")}
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


_DISTRIBUTED = None


def define_distributed_flags() -> None:
  """The multi-host flags shared by `train` and `encode` (defined once)."""
  global _DISTRIBUTED
  if _DISTRIBUTED is not None:
    return
  _DISTRIBUTED = (
      flags.DEFINE_string(
          "coordinator_address", None,
          "host:port of process 0, for a multi-host run started by hand (TPU pods, "
          "SLURM and Open MPI are detected without it)."),
      flags.DEFINE_integer("num_processes", None, "Processes in the job."),
      flags.DEFINE_integer("process_id", None, "This process's index."),
      flags.DEFINE_bool("multihost", False,
                        "Join a multi-host job found by jax itself (TPU pod, SLURM)."))


def initialize_distributed() -> None:
  """`jax.distributed` joined as the multi-host flags say (nothing for one process)."""
  from jaxembed.sharding.distributed import initialize
  coordinator, num_processes, process_id, multihost = (f.value for f in _DISTRIBUTED)
  initialize(coordinator, num_processes, process_id, multihost=multihost)


def packaged_configs() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and not f.startswith("_") and f != "common.py")


def config_path(value: str) -> str:
  """`--config`'s value with a packaged config's name replaced by its file: a path
  that exists (or names a .py file) is left as it is."""
  name, sep, args = value.partition(":")
  if os.path.exists(name) or name.endswith(".py") and os.sep in name:
    return value
  packaged = os.path.join(CONFIG_DIR, name.removesuffix(".py") + ".py")
  if os.path.isfile(packaged) and name.removesuffix(".py") in packaged_configs():
    return packaged + sep + args
  return value


def resolve_configs(args: list[str]) -> list[str]:
  """Command-line arguments with `--config=NAME[:args]` (or `--config NAME`) resolved."""
  out = list(args)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_path(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


def _usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
  return "usage: jaxembed <command> [flags]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}; valid: {list(COMMANDS)}", file=sys.stderr)
    sys.exit(2)
  if command == "configs":
    print("\n".join(packaged_configs()))
    return
  module = importlib.import_module(COMMANDS[command][0])
  sys.argv = [f"jaxembed {command}", *argv[2:]]
  module.run()
