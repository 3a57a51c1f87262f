"""The layout of a training workdir, and loading a model back from one.

  config.json          the run's config (a rerun must match it)
  model/               the base model's config.json and tokenizer.json (self-contained)
  checkpoints/<step>/  orbax checkpoints: params, train_state, data
  train_log.jsonl      one JSON object per logged step
  metrics_before.json  the grid before training (kept, so a resume doesn't redo it)
  metrics.json         {"before": [...], "after": [...]}
  grid.png             heatmap of the grid
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections

from jaxembed.errors import ConfigError, ModelLoadError


class Workdir:

  def __init__(self, path: str):
    self.path = os.path.abspath(os.path.expanduser(path))

  def __getattr__(self, name):
    files = {"config": "config.json", "model_dir": "model", "checkpoints": "checkpoints",
             "train_log": "train_log.jsonl", "metrics_before": "metrics_before.json",
             "metrics": "metrics.json", "heatmap": "grid.png"}
    if name in files:
      return os.path.join(self.path, files[name])
    raise AttributeError(name)

  def check_config(self, config: ml_collections.ConfigDict) -> bool:
    """True if the workdir already holds this run; raises if it holds another."""
    if not os.path.exists(self.config):
      return False
    with open(self.config) as f:
      saved = json.load(f)
    now = json.loads(config.to_json_best_effort())
    diffs = sorted(_diff(saved, now))
    if diffs:
      shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])
      raise ConfigError(
          f"--workdir={self.path} holds a run with a different config ({shown}). "
          "Use a new --workdir, or delete this one to start over.")
    return True

  def write_config(self, config: ml_collections.ConfigDict, model_folder) -> None:
    """Writes config.json and copies the small model files (not the weights)."""
    if jax.process_index() != 0:
      return
    os.makedirs(self.model_dir, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
      shutil.copy(os.path.join(model_folder.path, name), os.path.join(self.model_dir, name))
    with open(os.path.join(self.model_dir, "jaxembed.json"), "w") as f:
      json.dump({"pooling": model_folder.pooling,
                 "max_seq_length": model_folder.max_seq_length}, f)
    tmp = self.config + ".tmp"
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=1))
    os.replace(tmp, self.config)

  def truncate_log(self, last_step: int) -> None:
    """Drops log lines past the restored step (they were written after the last
    checkpoint of a run that then died), so the log reads as one run."""
    if jax.process_index() != 0 or not os.path.exists(self.train_log):
      return
    with open(self.train_log) as f:
      lines = [l for l in f if l.strip() and json.loads(l)["step"] <= last_step]
    with open(self.train_log, "w") as f:
      f.writelines(lines)

  def append_log(self, record: dict) -> None:
    if jax.process_index() != 0:
      return
    with open(self.train_log, "a") as f:
      f.write(json.dumps(record) + "\n")


def _diff(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield prefix.rstrip("."), a, b


def load_from_workdir(path: str):
  """The latest checkpoint's parameters with the run's model and tokenizer."""
  import jax.numpy as jnp
  from jaxembed.api import EmbeddingModel
  from jaxembed.checkpoint import Checkpointer
  from jaxembed.data.tokenizer import Tokenizer
  from jaxembed.models.bert import BertConfig
  from jaxembed.train.loop import abstract_params

  wd = Workdir(path)
  with open(wd.config) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(wd.model_dir, "config.json")) as f:
    bert = BertConfig.from_hf(json.load(f), **dict(config.model.bert_overrides))
  with open(os.path.join(wd.model_dir, "jaxembed.json")) as f:
    meta = json.load(f)
  ckpt = Checkpointer(wd.checkpoints, read_only=True)
  if ckpt.latest_step() is None:
    raise ModelLoadError(f"{path}: the workdir has no checkpoint yet")
  shapes = abstract_params(bert, config.model.pooling)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)
  params = jax.tree.map(jnp.asarray, ckpt.restore_params(target))
  ckpt.close()
  tok = Tokenizer(os.path.join(wd.model_dir, "tokenizer.json"), meta["max_seq_length"])
  return EmbeddingModel(bert, params, tok, pooling=config.model.pooling, normalize=True)
