"""The train state: a plain pytree, saved and sharded as such."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar
  params: Any            # {'encoder': ...}
  opt_state: Any
  rng: jax.Array         # uint32[2] raw key; per-step keys are fold_in(rng, step)
