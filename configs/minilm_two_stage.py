"""The packaged config jaxembed/configs/minilm_two_stage.py (read it there), under its
path in the repository: `--config=configs/minilm_two_stage.py` and `jaxembed train
--config=minilm_two_stage` are the same."""

from jaxembed.configs.minilm_two_stage import *  # noqa: F401,F403
