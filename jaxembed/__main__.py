"""`python -m jaxembed <command>`: the `jaxembed` console script (jaxembed/cli)."""

from jaxembed.cli import main

if __name__ == "__main__":
  main()
