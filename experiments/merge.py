r"""Merges training runs fine-tuned from one pretrained model into one model folder.

  python -m experiments.merge --workdirs=runs/a,runs/b --method=self_positioning \
      --out=merged/ab

Methods (`jaxembed/train/merge.py`): `uniform` (the average of the runs' weights),
`task_arithmetic` (θ0 + λ Σ τ_i; λ from --scale, or chosen by the lowest probe loss
over 0.25 … 1.25), `self_positioning` (θ0 + Σ α_i τ_i with α found by Adam on the
training objective over a probe set drawn equally from each run's training data;
Li et al. 2024). The probe batches are fresh draws (each run's data seed + 1000), not
the batches the runs trained on. The folder is what `experiments.export` writes (a
sentence-transformers folder when the model allows it, else a Flax folder) and
`jaxembed.load` reads it; `merge.json` beside the weights records the method, the
coefficients and the probe losses.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_WORKDIRS = flags.DEFINE_list("workdirs", [], "training workdirs fine-tuned from one start")
_METHOD = flags.DEFINE_enum("method", "self_positioning",
                            ["uniform", "task_arithmetic", "self_positioning"], "merge rule")
_OUT = flags.DEFINE_string("out", None, "the model folder to write (new or empty)")
_SCALE = flags.DEFINE_float("scale", 0.0, "task_arithmetic's λ; 0: chosen on the probe")
_PROBE = flags.DEFINE_integer("probe_batches", 8, "probe batches drawn from each run's data")
_STEPS = flags.DEFINE_integer("steps", 30, "self_positioning's Adam steps")
_LR = flags.DEFINE_float("learning_rate", 0.05, "self_positioning's Adam learning rate")


def merge(workdirs, method: str, *, scale: float = 0.0, probe_batches: int = 8,
          steps: int = 30, learning_rate: float = 0.05, log=print):
  """(the run set up from the first workdir's config, the merged parameters, a record
  of the merge)."""
  from jaxembed.errors import ConfigError
  from jaxembed.train import merge as mg
  if len(workdirs) < 2:
    raise ConfigError(f"--workdirs: {len(workdirs)} given; merging needs at least two")
  run = mg.workdir_run(workdirs[0], others=workdirs[1:])
  base = mg.load_params(run, "pretrained")
  tuned = [mg.load_params(run, w) for w in workdirs]
  record = {"method": method, "workdirs": list(workdirs)}
  k = len(workdirs)
  if method == "uniform":
    alphas = [1.0 / k] * k
  else:
    if probe_batches < 1:
      raise ConfigError(f"--probe_batches={probe_batches} must be >= 1")
    taus = mg.task_vectors(base, tuned)
    probe = mg.interleave([mg.probe_batches(mg.workdir_run(w, seed_offset=1000),
                                            probe_batches) for w in workdirs])
    record["probe_batches"] = len(probe)
    if method == "task_arithmetic":
      if scale:
        lam = scale
      else:
        lam, table = mg.choose_scale(run, base, taus, probe)
        record["scale_losses"] = {str(s): v for s, v in table.items()}
        log(f"task arithmetic: probe loss per λ {table}; λ = {lam}")
      alphas = [lam] * k
      record["scale"] = lam
    else:
      found, history = mg.self_positioning(run, base, taus, probe, steps=steps,
                                           learning_rate=learning_rate, log=log)
      alphas = found.tolist()
      record.update(steps=steps, learning_rate=learning_rate, history=history)
    record["probe_loss"] = {
        "uniform": mg.probe_losses(run, base, taus, [[1.0 / k] * k], probe)[0],
        "merged": mg.probe_losses(run, base, taus, [alphas], probe)[0]}
    del taus
  record["alphas"] = [float(a) for a in alphas]
  taus = mg.task_vectors(base, tuned)
  return run, mg.combine(base, taus, alphas), record


def write_folder(workdir: str, params, out: str, record: dict) -> str:
  """The merged parameters as a model folder laid out like `workdir`'s model."""
  import jax
  import numpy as np
  import jaxembed
  from jaxembed.api import EmbeddingModel
  from jaxembed.export import export
  like = jaxembed.load(workdir)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  model = EmbeddingModel(like.spec, host, like.tokenizer)
  card = {"source": f"{record['method']} merge of {', '.join(record['workdirs'])}",
          "config": {"merge": {k: v for k, v in record.items() if k != "history"}}}
  export(model, out, card=card)
  with open(os.path.join(out, "merge.json"), "w") as f:
    json.dump(record, f, indent=1)
  return out


def main(argv):
  del argv
  from jaxembed.errors import ConfigError, JaxembedError
  if not _OUT.value:
    print("error: --out is required (the model folder to write)", file=sys.stderr)
    sys.exit(2)
  try:
    if os.path.exists(_OUT.value) and os.listdir(_OUT.value):
      raise ConfigError(f"--out={_OUT.value} exists and is not empty; choose a new folder")
    _, params, record = merge(_WORKDIRS.value, _METHOD.value, scale=_SCALE.value,
                              probe_batches=_PROBE.value, steps=_STEPS.value,
                              learning_rate=_LR.value)
    write_folder(_WORKDIRS.value[0], params, _OUT.value, record)
  except JaxembedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({k: v for k, v in record.items() if k != "history"}))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
