"""The packaged config jaxembed/configs/clip_fashion_mnist.py (read it there), under its
path in the repository: `--config=configs/clip_fashion_mnist.py` and `jaxembed train
--config=clip_fashion_mnist` are the same."""

from jaxembed.configs.clip_fashion_mnist import *  # noqa: F401,F403
