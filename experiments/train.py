"""Train and evaluate an embedding model: `jaxembed train` (jaxembed/cli/train.py).

  python -m experiments.train --config=configs/minilm_wordnet_2d.py --workdir=runs/default

Rerunning the same command resumes from the workdir's latest checkpoint. SIGTERM saves
a checkpoint and exits with status 0. Config fields can be overridden from the command
line, e.g. --config.train.steps=100.
"""

from jaxembed.cli.train import run

if __name__ == "__main__":
  run()
