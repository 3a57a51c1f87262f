"""The packaged config jaxembed/configs/own_data.py (read it there), under its path in
the repository: `--config=configs/own_data.py` and `jaxembed train --config=own_data`
are the same."""

from jaxembed.configs.own_data import *  # noqa: F401,F403
