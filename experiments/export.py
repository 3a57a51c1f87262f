r"""Exports a trained model: `jaxembed export` (jaxembed/cli/export.py).

  python -m experiments.export --workdir=runs/default --out=exported/l4_d128 \
      --layer=4 --dim=128
"""

from jaxembed.cli.export import run

if __name__ == "__main__":
  run()
