"""Staged recipes: a config's `stages` train one after another from each other's weights.

NV-Embed (Lee et al. 2024) instruction-tunes in two stages — retrieval data with
in-batch and hard negatives, then a blend of tasks — and KaLM-Embedding pre-trains on
weakly paired text before fine-tuning. A config says so with

  c.stages = ({"name": "retrieval", "train.steps": 1000, "data.mixture": (...)},
              {"name": "blend", "train.steps": 500, "loss.name": "info_nce", ...})

Each stage is the config with the stage's fields set (dotted field names, any field
but `model.*` and `stages`; 'name' names the stage). Stage k > 0 starts from stage
k - 1's final weights — LoRA factors merged into their kernels, so a stage may add,
drop or change LoRA — with a fresh optimizer, learning-rate schedule and data
iterator, and with the objective's own parameters (a learnable temperature) as its
config starts them (and loss.distill's teacher stays the pretrained model of
model.path, not the previous stage). Stages before the last train in `<workdir>/stages/<k>-<name>/`,
each a complete workdir; the last is the workdir itself, so `jaxembed.load(workdir)`
and metrics.json hold the final model, and its "before" column is the first stage's
(the model before any training). A rerun skips finished stages and resumes the
interrupted one from its checkpoint exactly as a single-stage run resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxembed import sharding as shd
from jaxembed.checkpoint import Checkpointer
from jaxembed.errors import ConfigError
from jaxembed.losses.registry import init_loss_params
from jaxembed.models import abstract_params, lora

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  config: ml_collections.ConfigDict
  workdir: str
  last: bool


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[Stage]:
  """The stages of `config` (checked), each with its config and workdir."""
  entries = tuple(config.stages)
  if not entries:
    return [Stage(0, "main", config, workdir, True)]
  names = []
  stages = []
  for k, entry in enumerate(entries):
    where = f"stages[{k}]"
    if not isinstance(entry, (dict, ml_collections.ConfigDict)):
      raise ConfigError(f"{where} must be a dict of config fields, got {entry!r}")
    entry = dict(entry)
    name = str(entry.pop("name", f"stage{k}"))
    if not _NAME.match(name) or name in names:
      raise ConfigError(f"{where}: name {name!r} must be unique and made of letters, "
                        "digits, '_', '-', '.'")
    names.append(name)
    explicit_before = "eval.before" in entry
    stage_config = copy.deepcopy(config)
    for key, value in entry.items():
      _set(stage_config, key, value, where)
    if k > 0:   # the model before training is the first stage's "before"
      stage_config.eval.before = False
    last = k == len(entries) - 1
    if last and k > 0 and stages[0].config.eval.before and not explicit_before:
      stage_config.eval.before = True      # reads the first stage's, copied over
    path = workdir if last else os.path.join(workdir, "stages", f"{k}-{name}")
    stages.append(Stage(k, name, stage_config, path, last))
  return stages


def _set(config, key: str, value, where: str) -> None:
  parts = key.split(".")
  if parts[0] in ("model", "stages"):
    raise ConfigError(f"{where}: {key!r}: a stage may not change model.* or stages "
                      "(every stage trains the same model)")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"{where}: no config field {key!r}"
                        + (f"; valid in {'.'.join(parts[:i]) or 'the config'}: "
                           f"{sorted(node.keys())}"
                           if isinstance(node, ml_collections.ConfigDict) else ""))
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    raise ConfigError(f"{where}: {key!r} is a group; set its fields ({key}.<field>)")
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: {key}={value!r}: {e}") from None


def finished(stage: Stage) -> bool:
  """Whether the stage's last step is checkpointed (stages before the last). Process
  0's view decides, so that every host takes the same branch."""
  directory = os.path.join(stage.workdir, "checkpoints")
  done = False
  if os.path.isdir(directory):
    ckpt = Checkpointer(directory, read_only=True)
    try:
      done = ckpt.latest_step() == int(stage.config.train.steps)
    finally:
      ckpt.close()
  return bool(multihost_utils.broadcast_one_to_all(np.int32(done)))


def carried_params(run, previous: Stage) -> dict:
  """The previous stage's final model weights laid out for `run` (the next stage):
  LoRA factors merged into their kernels; the objective's parameters and any LoRA
  group of the next stage are left to its own initialisation."""
  prev = previous.config
  prev_loss = init_loss_params(prev.loss)
  shapes = abstract_params(run.model, prev_loss, prev.optim.lora)
  rep = shd.replicated(run.mesh)
  model_groups = {k: v for k, v in run.param_shardings.items()
                  if k not in ("loss", lora.GROUP)}

  def target(group, tree):
    shardings = model_groups.get(group)
    if shardings is None:
      shardings = jax.tree.map(lambda _: rep, tree)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        tree, shardings)
  abstract = {group: target(group, tree) for group, tree in shapes.items()}
  ckpt = Checkpointer(os.path.join(previous.workdir, "checkpoints"), read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise ConfigError(f"stage {previous.name}: {previous.workdir} has no checkpoint")
    params = ckpt.restore_params(abstract)
  finally:
    ckpt.close()
  if int(prev.optim.lora.rank) > 0:
    params = lora.merge(params, lora.scale(prev.optim.lora))
  return {k: v for k, v in params.items() if k in model_groups}
