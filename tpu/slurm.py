"""Run jaxembed on several GPU nodes under SLURM: writes the sbatch script, submits it.

  python tpu/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu \\
      --config=configs/minilm_wordnet_2d.py --workdir=/shared/runs/minilm \\
      --override=mesh.fsdp=8 [--dry-run]

One process per node drives all its GPUs; `jax.distributed` finds the others through
SLURM's environment (`--multihost`). With --dry-run the script and the sbatch command
are printed, not written or run. Resubmitting after a preemption resumes from the
workdir's latest checkpoint; SIGTERM before the time limit saves one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def script(args) -> str:
  train = [".venv/bin/python", "-m", "experiments.train", f"--config={args.config}",
           f"--workdir={args.workdir}", "--multihost"]
  train += [f"--config.{o}" for o in args.override]
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={args.job_name}",
      f"#SBATCH --nodes={args.nodes}",
      "#SBATCH --ntasks-per-node=1",
      f"#SBATCH --gpus-per-node={args.gpus_per_node}",
      f"#SBATCH --cpus-per-task={args.cpus_per_task}",
      f"#SBATCH --time={args.time}",
      f"#SBATCH --output={args.workdir}/slurm-%j.out",
      "#SBATCH --signal=TERM@120",  # SIGTERM two minutes before the limit: save, exit 0
  ]
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  lines += [
      "set -euo pipefail",
      f"cd {shlex.quote(os.path.abspath(args.repo_dir))}",
      f"mkdir -p {shlex.quote(args.workdir)}",
      "srun --kill-on-bad-exit=1 " + shlex.join(train),
  ]
  return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus_per_node", type=int, default=8)
  p.add_argument("--cpus_per_task", type=int, default=16)
  p.add_argument("--partition", default=None)
  p.add_argument("--time", default="24:00:00")
  p.add_argument("--job_name", default="jaxembed")
  p.add_argument("--repo_dir", default=".", help="this repository, on a shared disk")
  p.add_argument("--config", default="configs/minilm_wordnet_2d.py")
  p.add_argument("--workdir", required=True, help="on a disk every node shares")
  p.add_argument("--override", action="append", default=[],
                 help="config override without the --config. prefix, e.g. mesh.fsdp=8")
  p.add_argument("--dry-run", action="store_true")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  if args.nodes < 1:
    parser().error("--nodes must be at least 1")
  text = script(args)
  path = os.path.join(args.workdir, "train.sbatch")
  if args.dry_run:
    print(f"# {path}")
    print(text, end="")
    print(shlex.join(["sbatch", path]))
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  print(shlex.join(["sbatch", path]), flush=True)
  return subprocess.call(["sbatch", path])


if __name__ == "__main__":
  sys.exit(main())
