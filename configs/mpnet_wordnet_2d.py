"""The packaged config jaxembed/configs/mpnet_wordnet_2d.py (read it there), under its
path in the repository: `--config=configs/mpnet_wordnet_2d.py` and `jaxembed train
--config=mpnet_wordnet_2d` are the same."""

from jaxembed.configs.mpnet_wordnet_2d import *  # noqa: F401,F403
