"""The packaged config jaxembed/configs/smollm2_nv_embed.py (read it there), under its
path in the repository: `--config=configs/smollm2_nv_embed.py` and `jaxembed train
--config=smollm2_nv_embed` are the same."""

from jaxembed.configs.smollm2_nv_embed import *  # noqa: F401,F403
