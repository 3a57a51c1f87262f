"""The packaged config jaxembed/configs/model_merging.py (read it there), under its path
in the repository: `--config=configs/model_merging.py` and `jaxembed train
--config=model_merging` are the same."""

from jaxembed.configs.model_merging import *  # noqa: F401,F403
