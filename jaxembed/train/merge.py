"""Merging runs fine-tuned from one start θ0 (the pretrained weights), as a run's
parameters:

* `soup`: a weighted average of runs' weights (a model soup; with the pretrained
  weights as one ingredient, WiSE-FT, Wortsman et al. 2022). The uniform soup of k
  runs is θ0 + (1/k) Σ τ_i, with the task vectors τ_i = θ_i − θ0.
* task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic"):
  θ0 + λ Σ τ_i, one scale λ for all task vectors, chosen on held-out batches
  (`choose_scale`: the lowest probe loss over a grid of λ).
* Self Positioning (Li et al. 2024, "Improving General Text Embedding Model: Tackling
  Task Conflict and Data Imbalance through Model Merging"): θ0 + Σ α_i τ_i with one
  coefficient per task vector, found by stochastic gradient descent on the training
  objective over a probe set drawn equally from every run's training data, so that no
  task's data dominates (`self_positioning`). The search moves only k numbers; the
  weights stay the runs'.

`experiments/merge.py` writes a merged model folder; `experiments/merge_study.py`
compares the methods with joint training.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxembed import sharding as shd
from jaxembed.api import EmbeddingModel
from jaxembed.checkpoint import Checkpointer
from jaxembed.errors import ConfigError
from jaxembed.export import export
from jaxembed.loaders import load
from jaxembed.train.run import setup
from jaxembed.train.state import abstract_state, start_params
from jaxembed.train.step import encode_pairs, loss_inputs
from jaxembed.workdir import Workdir

METHODS = ("uniform", "task_arithmetic", "self_positioning")
# Task arithmetic's grid of λ (Ilharco et al. choose λ on validation data the same way).
SCALES = (0.25, 0.5, 0.75, 1.0, 1.25)


def parse_ingredients(specs) -> list[tuple[str, float]]:
  """['runs/a:0.5', 'pretrained:0.5'] -> [('runs/a', 0.5), ('pretrained', 0.5)]; the
  weights must be >= 0 and sum to 1."""
  out = []
  for spec in specs:
    path, sep, weight = spec.rpartition(":")
    try:
      w = float(weight)
    except ValueError:
      w = float("nan")
    if not sep or not path or not math.isfinite(w) or w < 0:
      raise ConfigError(f"--ingredients: {spec!r} is not <workdir or pretrained>:<weight>")
    out.append((path, w))
  if not out or abs(sum(w for _, w in out) - 1.0) > 1e-6:
    raise ConfigError(f"--ingredients: weights {[w for _, w in out]} must sum to 1")
  return out


def load_params(run, path: str):
  """A workdir's latest parameters laid out as the run's, or the run's initial ones
  (`'pretrained'`: model.path's weights for a pretrained model). LoRA factors come
  merged into their kernels: runs are combined as the models they are (a sum of
  factors is not the sum of their products)."""
  if path == "pretrained":
    # θ0 as a run starts from it (with its centred exits' means, which training keeps).
    return run.view.merged(start_params(run))
  ckpt = Checkpointer(os.path.join(path, "checkpoints"), read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise ConfigError(f"{path}: the workdir has no checkpoint yet")
    return run.view.merged(ckpt.restore_params(abstract_state(run)[0].params))
  finally:
    ckpt.close()


def soup(run, ingredients):
  """The weighted sum of the ingredients' parameters, laid out as the run's state."""
  total = None
  for path, w in ingredients:
    scaled = jax.tree.map(lambda x: w * x, load_params(run, path))
    total = scaled if total is None else jax.tree.map(lambda a, b: a + b, total, scaled)
  return total


def task_vectors(base, tuned: list) -> list:
  """τ_i = θ_i − θ0 for every tuned parameter tree."""
  return [jax.tree.map(lambda t, b: t - b, params, base) for params in tuned]


def combine(base, taus: list, alphas):
  """θ0 + Σ_i alphas[i] τ_i (alphas: k numbers, or a traced [k] array)."""
  def one(b, *ts):
    return b + sum(alphas[i] * t for i, t in enumerate(ts)).astype(b.dtype)
  return jax.tree.map(one, base, *taus)


def _probe_loss(run):
  """loss(alphas, base, taus, batch, teacher): the run's training objective of the
  merged model on one batch, deterministic (no dropout)."""
  key = jax.random.PRNGKey(0)

  def loss(alphas, base, taus, batch, teacher):
    params = run.view.merged(combine(base, taus, alphas))
    vectors = encode_pairs(run.model, params, batch, None, deterministic=True)
    value, _ = run.loss_fn(*vectors, rng=key, loss_params=params.get("loss"),
                           inputs=loss_inputs(run.model, batch, teacher,
                                              run.other_teacher))
    return value
  return loss


def _teacher(run):
  return run.teacher_params() if run.distill else None


def probe_losses(run, base, taus, alphas_list, batches) -> list[float]:
  """The mean probe loss of θ0 + Σ α_i τ_i for each α in `alphas_list`."""
  fn = shd.mesh_jit(_probe_loss(run), run.mesh, run.rules)
  teacher = _teacher(run)
  out = []
  for alphas in alphas_list:
    a = jnp.asarray(alphas, jnp.float32)
    out.append(float(np.mean([float(fn(a, base, taus, b, teacher)) for b in batches])))
  return out


def choose_scale(run, base, taus, batches, scales=SCALES) -> tuple[float, dict]:
  """Task arithmetic's λ: the one of `scales` whose merge has the lowest mean probe
  loss; (λ, {λ: loss})."""
  k = len(taus)
  losses = probe_losses(run, base, taus, [[s] * k for s in scales], batches)
  table = dict(zip(scales, losses))
  return min(table, key=table.get), table


def self_positioning(run, base, taus, batches, *, steps: int, learning_rate: float,
                     init: float | None = None, log=None) -> tuple[np.ndarray, list]:
  """Self Positioning's coefficients: start at the uniform soup (α_i = 1/k, or
  `init`) and take `steps` Adam steps on the probe loss, one probe batch per step in
  the order given (interleave the runs' batches to keep the probe balanced). Returns
  (α, [(step, α, batch loss)])."""
  if steps < 1:
    raise ConfigError(f"--steps={steps}: Self Positioning needs at least one step")
  if not batches:
    raise ConfigError("Self Positioning needs probe batches (--probe_batches >= 1)")
  k = len(taus)
  alphas = jnp.full((k,), 1.0 / k if init is None else init, jnp.float32)
  tx = optax.adam(learning_rate)
  loss = _probe_loss(run)

  def step(alphas, opt_state, base, taus, batch, teacher):
    value, grad = jax.value_and_grad(loss)(alphas, base, taus, batch, teacher)
    updates, opt_state = tx.update(grad, opt_state, alphas)
    return optax.apply_updates(alphas, updates), opt_state, value

  step = shd.mesh_jit(step, run.mesh, run.rules)
  opt_state = tx.init(alphas)
  teacher = _teacher(run)
  history = []
  for i in range(steps):
    alphas, opt_state, value = step(alphas, opt_state, base, taus,
                                    batches[i % len(batches)], teacher)
    history.append((i + 1, np.asarray(alphas).tolist(), float(value)))
    if log is not None:
      log(f"self positioning step {i + 1}/{steps}  loss {float(value):.4f}  "
          f"alphas {np.round(np.asarray(alphas), 3).tolist()}")
  return np.asarray(alphas), history


def probe_batches(run, n: int) -> list:
  """The first `n` batches of the run's training data, as global arrays."""
  it = iter(run.dataset)
  return [shd.host_batch_to_global(run.mesh, next(it)) for _ in range(n)]


def interleave(per_run: list[list]) -> list:
  """[[a0, a1], [b0, b1]] -> [a0, b0, a1, b1]: a probe with every run's data equally."""
  return [b for group in zip(*per_run) for b in group]


# Evaluation fields of a run built only for its parameters' layout or its training
# data: one small set (SimLex-999, packaged) instead of all of them, since a run must
# have one.
_NO_EVAL = {"wordnet_queries": 0, "lee": False, "simlex": True, "wordsim": False,
            "polarity": False, "newsgroup": False, "ood": (), "beir_dir": "",
            "sts_files": ()}


def workdir_config(workdir: str):
  """A training workdir's saved config (its config.json)."""
  wd = Workdir(workdir)
  if not (wd.exists(Workdir.CONFIG) and os.path.isdir(os.path.join(workdir, "checkpoints"))):
    raise ConfigError(f"--workdirs: {workdir} is not a training workdir (config.json + "
                      "checkpoints/)")
  return ml_collections.ConfigDict(wd.saved_config())


def workdir_run(workdir: str, *, others=(), seed_offset: int = 0):
  """The run of `workdir`'s config without its large evaluation sets, on a scratch workdir
  (nothing is written). `others`: workdirs that must share its model (same `model`
  section: fine-tuned from one start, same shapes). `seed_offset` shifts the seed, so
  the run's data iterator draws batches the training did not."""
  config = workdir_config(workdir)
  for other in others:
    theirs = workdir_config(other).model
    diff = sorted(k for k in set(config.model.keys()) | set(theirs.keys())
                  if config.model.get(k) != theirs.get(k))
    if diff:
      raise ConfigError(f"--workdirs: {other} and {workdir} differ in model.{diff[0]} "
                        f"({theirs.get(diff[0])!r} vs {config.model.get(diff[0])!r}); "
                        "merging needs runs fine-tuned from one model")
  config.seed = config.seed + seed_offset
  for key, value in _NO_EVAL.items():
    config.eval[key] = value
  scratch = tempfile.mkdtemp(prefix="jaxembed-merge-")
  # Removed when the process ends (each merge or soup used to leave one behind).
  atexit.register(shutil.rmtree, scratch, ignore_errors=True)
  return setup(config, scratch)


def merge_runs(workdirs, method: str, *, scale: float = 0.0, probes_per_run: int = 8,
               steps: int = 30, learning_rate: float = 0.05, log=print):
  """Merges training runs fine-tuned from one model by `method` (one of METHODS):
  (the run set up from the first workdir's config, the merged parameters, a record of
  the merge: coefficients, probe losses). The probe batches are fresh draws of each
  run's data (seed + 1000), `probes_per_run` from each."""
  if method not in METHODS:
    raise ConfigError(f"--method={method!r}; valid: {list(METHODS)}")
  if len(workdirs) < 2:
    raise ConfigError(f"--workdirs: {len(workdirs)} given; merging needs at least two")
  run = workdir_run(workdirs[0], others=workdirs[1:])
  base = load_params(run, "pretrained")
  tuned = [load_params(run, w) for w in workdirs]
  record = {"method": method, "workdirs": list(workdirs)}
  k = len(workdirs)
  taus = task_vectors(base, tuned)
  if method == "uniform":
    alphas = [1.0 / k] * k
  else:
    if probes_per_run < 1:
      raise ConfigError(f"--probe_batches={probes_per_run} must be >= 1")
    probe = interleave([probe_batches(workdir_run(w, seed_offset=1000), probes_per_run)
                        for w in workdirs])
    record["probe_batches"] = len(probe)
    if method == "task_arithmetic":
      if scale:
        lam = scale
      else:
        lam, table = choose_scale(run, base, taus, probe)
        record["scale_losses"] = {str(s): v for s, v in table.items()}
        log(f"task arithmetic: probe loss per λ {table}; λ = {lam}")
      alphas = [lam] * k
      record["scale"] = lam
    else:
      found, history = self_positioning(run, base, taus, probe, steps=steps,
                                        learning_rate=learning_rate, log=log)
      alphas = found.tolist()
      record.update(steps=steps, learning_rate=learning_rate, history=history)
    record["probe_loss"] = {
        "uniform": probe_losses(run, base, taus, [[1.0 / k] * k], probe)[0],
        "merged": probe_losses(run, base, taus, [alphas], probe)[0]}
  record["alphas"] = [float(a) for a in alphas]
  return run, combine(base, taus, alphas), record


def write_merged(workdir: str, params, out: str, record: dict) -> str:
  """The merged parameters as a model folder laid out like `workdir`'s model (what
  `experiments.export` writes; `jaxembed.load` reads it), with merge.json beside."""
  like = load(workdir)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  model = EmbeddingModel(like.spec, host, like.tokenizer)
  card = {"source": f"{record['method']} merge of {', '.join(record['workdirs'])}",
          "config": {"merge": {k: v for k, v in record.items() if k != "history"}}}
  export(model, out, card=card)
  with open(os.path.join(out, "merge.json"), "w") as f:
    json.dump(record, f, indent=1)
  return out
