"""The packaged config jaxembed/configs/smollm2_pooling.py (read it there), under its
path in the repository: `--config=configs/smollm2_pooling.py` and `jaxembed train
--config=smollm2_pooling` are the same."""

from jaxembed.configs.smollm2_pooling import *  # noqa: F401,F403
