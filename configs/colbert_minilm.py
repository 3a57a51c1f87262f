"""The packaged config jaxembed/configs/colbert_minilm.py (read it there), under its
path in the repository: `--config=configs/colbert_minilm.py` and `jaxembed train
--config=colbert_minilm` are the same."""

from jaxembed.configs.colbert_minilm import *  # noqa: F401,F403
