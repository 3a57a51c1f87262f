"""The packaged config jaxembed/configs/minilm_wordnet_mined.py (read it there), under
its path in the repository: `--config=configs/minilm_wordnet_mined.py` and `jaxembed
train --config=minilm_wordnet_mined` are the same."""

from jaxembed.configs.minilm_wordnet_mined import *  # noqa: F401,F403
