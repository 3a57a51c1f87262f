"""The packaged config jaxembed/configs/mrl_fashion_mnist.py (read it there), under its
path in the repository: `--config=configs/mrl_fashion_mnist.py` and `jaxembed train
--config=mrl_fashion_mnist` are the same."""

from jaxembed.configs.mrl_fashion_mnist import *  # noqa: F401,F403
