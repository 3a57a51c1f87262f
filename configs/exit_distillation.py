"""The packaged config jaxembed/configs/exit_distillation.py (read it there), under its
path in the repository: `--config=configs/exit_distillation.py` and `jaxembed train
--config=exit_distillation` are the same."""

from jaxembed.configs.exit_distillation import *  # noqa: F401,F403
