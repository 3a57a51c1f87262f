"""The packaged config jaxembed/configs/ood_ablation.py (read it there), under its path
in the repository: `--config=configs/ood_ablation.py` and `jaxembed train
--config=ood_ablation` are the same."""

from jaxembed.configs.ood_ablation import *  # noqa: F401,F403
