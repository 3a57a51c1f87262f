"""The packaged config jaxembed/configs/minilm_wordnet_2d.py (read it there), under its
path in the repository: `--config=configs/minilm_wordnet_2d.py` and `jaxembed train
--config=minilm_wordnet_2d` are the same."""

from jaxembed.configs.minilm_wordnet_2d import *  # noqa: F401,F403
