"""The packaged config jaxembed/configs/matryoshka_schemes.py (read it there), under its
path in the repository: `--config=configs/matryoshka_schemes.py` and `jaxembed train
--config=matryoshka_schemes` are the same."""

from jaxembed.configs.matryoshka_schemes import *  # noqa: F401,F403
