r"""Embeds a corpus into one array: `jaxembed encode` (jaxembed/cli/encode.py).

  python -m experiments.encode --model=runs/default --input=corpus.txt --out=emb/
"""

from jaxembed.cli.encode import run

if __name__ == "__main__":
  run()
