"""The layout of a training workdir, and loading a model back from one.

  config.json          the run's config (a rerun must match it)
  model/               the base model's config.json and tokenizer.json (self-contained)
  checkpoints/<step>/  orbax checkpoints: params, train_state, data
  train_log.jsonl      one JSON object per logged step
  eval_log.jsonl       {"step", "grid": [...]} per evaluation (before, every
                       train.eval_every steps, after)
  tensorboard/         TensorBoard event files: train/* and eval/<metric>/L<l>_d<d>
  metrics_before.json  the grid before training (kept, so a resume doesn't redo it)
  metrics.json         {"before": [...], "after": [...]}
  grid.png             heatmap of the grid

Paths go through etils.epath, so a workdir may be local or on a bucket shared by the
hosts of a pod (gs://...; needs gcsfs). Only process 0 writes files here; Orbax
coordinates the checkpoint writes of all processes itself.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from etils import epath

from jaxembed.errors import ConfigError, ModelLoadError


class Workdir:
  CONFIG = "config.json"
  MODEL_DIR = "model"
  CHECKPOINTS = "checkpoints"
  TRAIN_LOG = "train_log.jsonl"
  EVAL_LOG = "eval_log.jsonl"
  TENSORBOARD = "tensorboard"
  METRICS_BEFORE = "metrics_before.json"
  METRICS = "metrics.json"
  HEATMAP = "grid.png"

  def __init__(self, path: str):
    path = str(path)
    self.remote = "://" in path
    self.path = epath.Path(path if self.remote else os.path.abspath(os.path.expanduser(path)))

  def __truediv__(self, name: str) -> epath.Path:
    return self.path / name

  @property
  def checkpoints(self) -> str:
    return str(self / self.CHECKPOINTS)

  def exists(self, name: str) -> bool:
    return (self / name).exists()

  def read_json(self, name: str):
    return json.loads((self / name).read_text())

  def write(self, name: str, data: str | bytes) -> None:
    """Process 0 only; atomic on local disks (write then rename), as objects are on
    a bucket."""
    if jax.process_index() != 0:
      return
    target = self / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if self.remote:
      (target.write_bytes if isinstance(data, bytes) else target.write_text)(data)
      return
    tmp = target.parent / (target.name + ".tmp")
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    os.replace(tmp, target)

  def check_config(self, config: ml_collections.ConfigDict) -> bool:
    """True if the workdir already holds this run; raises if it holds another."""
    if not self.exists(self.CONFIG):
      return False
    saved = self.read_json(self.CONFIG)
    now = json.loads(config.to_json_best_effort())
    diffs = sorted(_diff(saved, now))
    if diffs:
      shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])
      raise ConfigError(
          f"--workdir={self.path} holds a run with a different config ({shown}). "
          "Use a new --workdir, or delete this one to start over.")
    return True

  def write_config(self, config: ml_collections.ConfigDict, model_folder,
                   encoder_config=None) -> None:
    """Writes config.json and copies the small model files (not the weights); the
    encoder's full config goes to model/jaxembed.json, so loading needs nothing else."""
    import dataclasses
    hf_config = os.path.join(model_folder.path, "config.json")
    if os.path.isfile(hf_config):
      with open(hf_config) as f:
        self.write(f"{self.MODEL_DIR}/config.json", f.read())
    else:   # weights from an ONNX file: the config comes from its shapes
      self.write(f"{self.MODEL_DIR}/config.json", json.dumps(model_folder.bert.to_hf()))
    with open(model_folder.tokenizer) as f:
      self.write(f"{self.MODEL_DIR}/tokenizer.json", f.read())
    meta = {"pooling": model_folder.pooling, "max_seq_length": model_folder.max_seq_length}
    if encoder_config is not None and config.model.get("encoder") != "two_tower":
      meta.update(encoder=type(encoder_config).__name__,
                  encoder_config=dataclasses.asdict(encoder_config),
                  padding_side=config.data.padding_side,
                  max_seq_length=min(config.eval.max_length,
                                     encoder_config.max_position_embeddings))
    self.write(f"{self.MODEL_DIR}/jaxembed.json", json.dumps(meta))
    self.write(self.CONFIG, config.to_json_best_effort(indent=1))

  def _log_lines(self, name: str) -> list[str]:
    if not self.exists(name):
      return []
    return [l + "\n" for l in (self / name).read_text().splitlines() if l.strip()]

  def truncate_log(self, last_step: int) -> None:
    """Drops log lines past the restored step (they were written after the last
    checkpoint of a run that then died), so the logs read as one run."""
    for name in (self.TRAIN_LOG, self.EVAL_LOG):
      if self.exists(name):
        lines = [l for l in self._log_lines(name) if json.loads(l)["step"] <= last_step]
        self.write(name, "".join(lines))

  def drop_log_entries(self, name: str, predicate) -> None:
    if self.exists(name):
      self.write(name, "".join(l for l in self._log_lines(name)
                               if not predicate(json.loads(l))))

  def append_log(self, record: dict, name: str = TRAIN_LOG) -> None:
    if jax.process_index() != 0:
      return
    line = json.dumps(record) + "\n"
    if self.remote:  # bucket objects cannot be appended to: rewrite
      self.write(name, "".join(self._log_lines(name)) + line)
      return
    with open(self / name, "a") as f:
      f.write(line)


def _diff(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield prefix.rstrip("."), a, b


def load_from_workdir(path: str):
  """The latest checkpoint's parameters with the run's model and tokenizer."""
  import tempfile

  import jax.numpy as jnp
  from jaxembed.api import EmbeddingModel
  from jaxembed.checkpoint import Checkpointer
  from jaxembed.data.tokenizer import Tokenizer
  from jaxembed.models.bert import BertConfig
  from jaxembed.losses.registry import init_loss_params
  from jaxembed.train.loop import abstract_params

  from jaxembed.models.embedder import encoder_config
  wd = Workdir(path)
  config = ml_collections.ConfigDict(wd.read_json(Workdir.CONFIG))
  meta = wd.read_json(f"{Workdir.MODEL_DIR}/jaxembed.json")
  if config.model.get("encoder") == "two_tower":
    raise ModelLoadError(f"{path}: a two-tower run; jaxembed.load returns single-tower "
                         "text embedders. Restore its params with "
                         "jaxembed.checkpoint.Checkpointer and apply "
                         "jaxembed.models.two_tower.TwoTower")
  if "encoder_config" in meta:
    bert = encoder_config(meta["encoder"], meta["encoder_config"])
  else:   # workdirs written before the encoder config was recorded: BERT
    bert = BertConfig.from_hf(wd.read_json(f"{Workdir.MODEL_DIR}/config.json"),
                              **dict(config.model.bert_overrides))
  ckpt = Checkpointer(wd.checkpoints, read_only=True)
  if ckpt.latest_step() is None:
    raise ModelLoadError(f"{path}: the workdir has no checkpoint yet")
  config_for_model = _with_model_defaults(config)
  shapes = abstract_params(bert, config_for_model, init_loss_params(config.loss))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)
  params = jax.tree.map(jnp.asarray, ckpt.restore_params(target))
  ckpt.close()
  # The tokenizers library reads a local file.
  tok_file = os.path.join(tempfile.mkdtemp(prefix="jaxembed-tok-"), "tokenizer.json")
  with open(tok_file, "w") as f:
    f.write((wd / Workdir.MODEL_DIR / "tokenizer.json").read_text())
  tok = Tokenizer(tok_file, meta["max_seq_length"], meta.get("padding_side", "right"))
  m = config_for_model.model
  return EmbeddingModel(bert, params, tok, pooling=m.pooling, normalize=True,
                        pool_heads=m.pool_heads, pool_latents=m.pool_latents)


def _with_model_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A saved config with the model fields added since it was written at their
  defaults (a workdir of an older run still loads)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, default in (("pool_heads", 8), ("pool_latents", 64), ("encoder", "bert")):
    if key not in config.model:
      config.model[key] = default
  return config
