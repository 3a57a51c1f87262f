"""The packaged config jaxembed/configs/limit_free_embedding.py (read it there), under
its path in the repository: `--config=configs/limit_free_embedding.py` and `jaxembed
train --config=limit_free_embedding` are the same."""

from jaxembed.configs.limit_free_embedding import *  # noqa: F401,F403
