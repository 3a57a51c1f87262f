"""The pod and SLURM launchers print complete, correct commands with --dry-run."""

import shlex
import subprocess
import sys

from conftest import REPO

POD = [sys.executable, "tpu/pod.py"]
BASE = ["--name=embed", "--zone=us-central2-b", "--project=my-proj"]


def dry(*args, tool=POD):
  out = subprocess.run([*tool, *args, "--dry-run"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout


def one_command(text):
  lines = [l for l in text.splitlines() if l.strip()]
  assert len(lines) == 1, text
  return shlex.split(lines[0])


def test_create_and_delete():
  cmd = one_command(dry("create", *BASE, "--accelerator=v5litepod-16", "--spot"))
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "embed"]
  assert {"--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v5litepod-16",
          "--spot"} <= set(cmd)
  assert any(a.startswith("--version=") for a in cmd)
  cmd = one_command(dry("delete", *BASE))
  assert cmd[4:6] == ["delete", "embed"] and "--quiet" in cmd


def remote(cmd):
  assert cmd[4] == "ssh"
  (command,) = [a[len("--command="):] for a in cmd if a.startswith("--command=")]
  return command


def test_setup_installs_on_every_worker():
  cmd = one_command(dry("setup", *BASE, "--repo=https://example.org/jaxembed.git",
                        "--rev=v1"))
  assert "--worker=all" in cmd
  steps = remote(cmd).split(" && ")
  assert "git clone https://example.org/jaxembed.git jaxembed" in steps[0]
  assert "git checkout v1" in steps and "bash scripts/install.sh" in steps
  assert shlex.split(steps[-1])[-2:] == ["jax[tpu]==0.10.2", "gcsfs"]


def test_launch_runs_the_same_train_command_everywhere():
  cmd = one_command(dry("launch", *BASE, "--config=configs/minilm_wordnet_2d.py",
                        "--workdir=gs://bucket/run", "--override=mesh.fsdp=4",
                        "--override=train.steps=1000"))
  assert "--worker=all" in cmd
  text = remote(cmd)
  assert text.startswith("cd jaxembed && nohup ") and text.endswith("> train.log 2>&1 &")
  train = shlex.split(text[len("cd jaxembed && nohup "):-len(" > train.log 2>&1 &")])
  assert train == [".venv/bin/python", "-m", "experiments.train",
                   "--config=configs/minilm_wordnet_2d.py", "--workdir=gs://bucket/run",
                   "--multihost", "--config.mesh.fsdp=4", "--config.train.steps=1000"]


def test_launch_without_workdir_is_refused():
  out = subprocess.run([*POD, "launch", *BASE, "--dry-run"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "--workdir" in out.stderr


def test_logs_follow_one_worker():
  cmd = one_command(dry("logs", *BASE, "--worker=3"))
  assert "--worker=3" in cmd and remote(cmd) == "tail -n 100 -f jaxembed/train.log"


def test_slurm_script():
  text = dry("--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--workdir=/shared/run",
             "--override=mesh.fsdp=8", tool=[sys.executable, "tpu/slurm.py"])
  lines = text.splitlines()
  assert lines[0] == "# /shared/run/train.sbatch" and lines[1] == "#!/bin/bash"
  for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                    "--partition=gpu", "--signal=TERM@120"):
    assert f"#SBATCH {directive}" in lines
  (srun,) = [l for l in lines if l.startswith("srun ")]
  assert shlex.split(srun)[2:] == [
      ".venv/bin/python", "-m", "experiments.train",
      "--config=configs/minilm_wordnet_2d.py", "--workdir=/shared/run", "--multihost",
      "--config.mesh.fsdp=8"]
  assert lines[-1] == "sbatch /shared/run/train.sbatch"
