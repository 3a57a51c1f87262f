r"""Merges training runs fine-tuned from one pretrained model: `jaxembed merge`
(jaxembed/cli/merge.py).

  python -m experiments.merge --workdirs=runs/a,runs/b --method=self_positioning \
      --out=merged/ab
"""

from jaxembed.cli.merge import run

if __name__ == "__main__":
  run()
