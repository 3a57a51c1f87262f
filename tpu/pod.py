"""Run jaxembed on a Cloud TPU VM pod slice: create, set up, launch, follow, delete.

  python tpu/pod.py create --name=embed --zone=us-central2-b --accelerator=v4-32
  python tpu/pod.py setup  --name=embed --zone=us-central2-b --repo=https://github.com/you/jaxembed
  python tpu/pod.py launch --name=embed --zone=us-central2-b \\
      --config=configs/minilm_wordnet_2d.py --workdir=gs://bucket/runs/minilm \\
      --override=mesh.fsdp=4
  python tpu/pod.py logs   --name=embed --zone=us-central2-b
  python tpu/pod.py delete --name=embed --zone=us-central2-b

Every command takes --dry-run, which prints the exact gcloud commands instead of
running them. `launch` starts the same `experiments.train` command on every worker
with --multihost (jax finds the other workers itself); relaunching it after a
preemption resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

REMOTE_DIR = "jaxembed"
LOG = "train.log"


def _gcloud_tpu(args, verb: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
  return _gcloud_tpu(args, "ssh") + [f"--worker={worker}", f"--command={remote}"]


def train_command(args) -> str:
  """The command every worker runs, shell-quoted."""
  cmd = [".venv/bin/python", "-m", "experiments.train", f"--config={args.config}",
         f"--workdir={args.workdir}", "--multihost"]
  cmd += [f"--config.{o}" for o in args.override]
  return shlex.join(cmd)


def commands(args) -> list[list[str]]:
  if args.action == "create":
    cmd = _gcloud_tpu(args, "create") + [f"--accelerator-type={args.accelerator}",
                                         f"--version={args.version}"]
    if args.spot:
      cmd.append("--spot")
    return [cmd]
  if args.action == "setup":
    remote = " && ".join([
        f"(test -d {REMOTE_DIR} || git clone {shlex.quote(args.repo)} {REMOTE_DIR})",
        f"cd {REMOTE_DIR}", "git fetch --all", f"git checkout {shlex.quote(args.rev)}",
        "bash scripts/install.sh",
        f".venv/bin/pip install -q {shlex.quote(f'jax[tpu]=={args.jax_version}')} gcsfs",
    ])
    return [_ssh(args, remote)]
  if args.action == "launch":
    remote = (f"cd {REMOTE_DIR} && nohup {train_command(args)} > {LOG} 2>&1 &")
    return [_ssh(args, remote)]
  if args.action == "logs":
    return [_ssh(args, f"tail -n 100 -f {REMOTE_DIR}/{LOG}", worker=str(args.worker))]
  if args.action == "delete":
    return [_gcloud_tpu(args, "delete") + ["--quiet"]]
  raise ValueError(args.action)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("action", choices=["create", "setup", "launch", "logs", "delete"])
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--accelerator", default="v4-32", help="e.g. v4-32, v5litepod-16")
  p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime")
  p.add_argument("--spot", action="store_true", help="create a preemptible (spot) slice")
  p.add_argument("--repo", default=None, help="git URL of this repository (setup)")
  p.add_argument("--rev", default="main", help="git revision to check out (setup)")
  p.add_argument("--jax_version", default="0.10.2")
  p.add_argument("--config", default="configs/minilm_wordnet_2d.py")
  p.add_argument("--workdir", default=None, help="shared by all workers, e.g. gs://...")
  p.add_argument("--override", action="append", default=[],
                 help="config override without the --config. prefix, e.g. mesh.fsdp=4")
  p.add_argument("--worker", default=0, help="which worker's log to follow")
  p.add_argument("--dry-run", action="store_true", help="print the commands only")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  if args.action == "setup" and not args.repo:
    parser().error("setup needs --repo (the git URL the workers clone)")
  if args.action == "launch" and not args.workdir:
    parser().error("launch needs --workdir, a path every worker shares (gs://...)")
  for cmd in commands(args):
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
      rc = subprocess.call(cmd)
      if rc:
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
