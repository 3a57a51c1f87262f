r"""Merges training runs fine-tuned from one pretrained model into one model folder.

  jaxembed merge --workdirs=runs/a,runs/b --method=self_positioning \
      --out=merged/ab

Methods (`jaxembed/train/merge.py`): `uniform` (the average of the runs' weights),
`task_arithmetic` (θ0 + λ Σ τ_i; λ from --scale, or chosen by the lowest probe loss
over 0.25 … 1.25), `self_positioning` (θ0 + Σ α_i τ_i with α found by Adam on the
training objective over a probe set drawn equally from each run's training data;
Li et al. 2024). The probe batches are fresh draws (each run's data seed + 1000), not
the batches the runs trained on. The folder is what `jaxembed export` writes (a
sentence-transformers folder when the model allows it, else a Flax folder) and
`jaxembed.load` reads it; `merge.json` beside the weights records the method, the
coefficients and the probe losses.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_WORKDIRS = None
_METHOD = None
_OUT = None
_SCALE = None
_PROBE = None
_STEPS = None
_LR = None


def define_flags() -> None:
  """Defines this command's flags, once: at import they would clash with the
  other commands' (every module of the package imports together)."""
  global _WORKDIRS, _METHOD, _OUT, _SCALE, _PROBE, _STEPS, _LR
  if _WORKDIRS is not None:
    return
  _WORKDIRS = flags.DEFINE_list("workdirs", [], "training workdirs fine-tuned from one start")
  _METHOD = flags.DEFINE_enum("method", "self_positioning",
                              ["uniform", "task_arithmetic", "self_positioning"], "merge rule")
  _OUT = flags.DEFINE_string("out", None, "the model folder to write (new or empty)")
  _SCALE = flags.DEFINE_float("scale", 0.0, "task_arithmetic's λ; 0: chosen on the probe")
  _PROBE = flags.DEFINE_integer("probe_batches", 8, "probe batches drawn from each run's data")
  _STEPS = flags.DEFINE_integer("steps", 30, "self_positioning's Adam steps")
  _LR = flags.DEFINE_float("learning_rate", 0.05, "self_positioning's Adam learning rate")



def main(argv):
  del argv
  from jaxembed.errors import ConfigError, JaxembedError
  from jaxembed.train.merge import merge_runs, write_merged
  if not _OUT.value:
    print("error: --out is required (the model folder to write)", file=sys.stderr)
    sys.exit(2)
  try:
    if os.path.exists(_OUT.value) and os.listdir(_OUT.value):
      raise ConfigError(f"--out={_OUT.value} exists and is not empty; choose a new folder")
    _, params, record = merge_runs(_WORKDIRS.value, _METHOD.value, scale=_SCALE.value,
                                   probes_per_run=_PROBE.value, steps=_STEPS.value,
                                   learning_rate=_LR.value)
    write_merged(_WORKDIRS.value[0], params, _OUT.value, record)
  except JaxembedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({k: v for k, v in record.items() if k != "history"}))
  print(f"wrote {_OUT.value}")


def run() -> None:
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
