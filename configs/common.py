"""The packaged config jaxembed/configs/common.py (read it there), under its path in the
repository: `--config=configs/common.py` and `jaxembed train --config=common` are the
same."""

from jaxembed.configs.common import *  # noqa: F401,F403
