"""The layout of a training workdir, and loading a model back from one.

  config.json          the run's config (a rerun must match it, except the fields in
                       RESUMABLE: more steps, other logging/checkpoint/eval cadence)
  data_fingerprint.json  size and SHA-256 of the user's training files (a resume
                       refuses files that changed)
  precision.json       model.dtype as configured and the matmul dtype it ran with
                       ('auto' resolves per machine: jaxembed/precision.py)
  .lock                held (flock) by the process training here
  model/               the base model's config.json, tokenizer.json and jaxembed.json
                       (the saved-model spec: `jaxembed.load` needs nothing else)
  checkpoints/<step>/  orbax checkpoints: params, train_state, data
  train_log.jsonl      one JSON object per logged step
  eval_log.jsonl       {"step", "grid": [...]} per evaluation (before, every
                       train.eval_every steps, after)
  tensorboard/         TensorBoard event files: train/* and eval/<metric>/L<l>_d<d>
  metrics_before.json  the grid before training (kept, so a resume doesn't redo it)
  metrics.json         {"before": [...], "after": [...]}
  heatmaps/<metric>.png  the grid after training and its change, one figure a metric

Paths go through etils.epath, so a workdir may be local or on a bucket shared by the
hosts of a pod (gs://...; needs gcsfs). Only process 0 writes files here; Orbax
coordinates the checkpoint writes of all processes itself.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import importlib.util
import json
import logging
import math
import os
import socket
import sys

import jax
import ml_collections
from etils import epath

from jaxembed import defaults
from jaxembed.errors import ConfigError, WorkdirBusyError
from jaxembed.models import spec as model_spec
from jaxembed.version import provenance

# Fields a rerun may change: they decide how long and how visibly the run goes on,
# not what it trains. A larger train.steps extends a finished run; the learning-rate
# schedule is rebuilt for the new total, so from the resumed step on it follows the
# new schedule (a run extended this way differs from one started with that total).
RESUMABLE = ("train.steps", "train.log_every", "train.checkpoint_every",
             "train.eval_every", "train.keep_checkpoints")

# Remote filesystems etils reaches through fsspec, and the package each needs.
_REMOTE_PACKAGES = {"gs": "gcsfs", "s3": "s3fs"}


def check_remote(path: str, field: str = "--workdir") -> None:
  """A gs:// (s3://) path needs gcsfs (s3fs); say so before anything is tried."""
  scheme = path.split("://", 1)[0] if "://" in path else ""
  package = _REMOTE_PACKAGES.get(scheme)
  if scheme and package is None:
    raise ConfigError(f"{field}={path!r}: unsupported scheme {scheme}://; use a local "
                      f"path or one of {[s + '://' for s in _REMOTE_PACKAGES]}")
  if package and importlib.util.find_spec(package) is None:
    raise ConfigError(f"{field}={path!r} needs the {package} package: "
                      f"pip install {package}")


class Workdir:
  CONFIG = "config.json"
  MODEL_DIR = "model"
  CHECKPOINTS = "checkpoints"
  TRAIN_LOG = "train_log.jsonl"
  EVAL_LOG = "eval_log.jsonl"
  TENSORBOARD = "tensorboard"
  METRICS_BEFORE = "metrics_before.json"
  METRICS = "metrics.json"
  HEATMAPS = "heatmaps"

  FINGERPRINT = "data_fingerprint.json"
  PRECISION = "precision.json"
  VERSION = "version.json"            # jaxembed version and git commit of the run
  LOCK = ".lock"

  def __init__(self, path: str):
    path = str(path)
    self.remote = "://" in path
    if self.remote:
      check_remote(path)
    self.path = epath.Path(path if self.remote else os.path.abspath(os.path.expanduser(path)))
    self._lock_file = None

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

  def saved_config(self) -> dict:
    """The run's config.json, its renamed fields under their new names
    (`defaults.migrate`, which warns about each)."""
    return defaults.migrate(self.read_json(self.CONFIG), str(self / self.CONFIG))

  def check_config(self, config: ml_collections.ConfigDict) -> bool:
    """True if the workdir already holds this run; raises if it holds another. Fields
    in RESUMABLE may differ (the new values apply from here on)."""
    if not self.exists(self.CONFIG):
      return False
    saved = self.saved_config()
    now = json.loads(config.to_json_best_effort())
    # A field added to jaxembed after the run started, at its default, is the old run.
    default = json.loads(defaults.base_config().to_json_best_effort())
    diffs = sorted(d for d in _diff(saved, now)
                   if not (d[1] is None and _lookup(saved, d[0]) is _ABSENT
                           and _same(_lookup(default, d[0]), d[2])))
    fixed = [d for d in diffs if d[0] not in RESUMABLE]
    if fixed:
      shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in fixed[:6])
      raise ConfigError(
          f"--workdir={self.path} holds a run with a different config ({shown}). "
          f"Use a new --workdir, or delete this one to start over (only {list(RESUMABLE)} "
          "may change on a rerun).")
    if diffs:
      logging.info("rerun with %s", "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs))
    return True

  def lock(self) -> None:
    """Takes the workdir for this process (local workdirs; process 0). A second run
    on the same workdir is refused, naming the process that holds it. The lock is an
    flock, which the kernel drops when its process dies, so a crashed run leaves no
    stale lock behind."""
    if self.remote or jax.process_index() != 0:
      return
    os.makedirs(self.path, exist_ok=True)
    f = open(self / self.LOCK, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise WorkdirBusyError(f"--workdir={self.path} is in use by {holder}; wait for it "
                             "to finish, or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()} since "
            f"{datetime.datetime.now().isoformat(timespec='seconds')} "
            f"({' '.join(sys.argv)[:200]})\n")
    f.flush()
    self._lock_file = f

  def unlock(self) -> None:
    if self._lock_file is not None:
      fcntl.flock(self._lock_file, fcntl.LOCK_UN)
      self._lock_file.close()
      self._lock_file = None

  def check_fingerprint(self, fingerprint: dict, resuming: bool) -> None:
    """Records the training files' fingerprint; on a resume, refuses files that
    changed since the run started (the data iterator's position would point into
    other data)."""
    if resuming and self.exists(self.FINGERPRINT):
      saved = self.read_json(self.FINGERPRINT)
      changed = sorted(p for p in set(saved) | set(fingerprint)
                       if saved.get(p) != fingerprint.get(p))
      if changed:
        raise ConfigError(
            f"the training data changed since this run started: {changed[:3]} (size or "
            f"SHA-256 differ from {self / self.FINGERPRINT}). Restore the files, or "
            "use a new --workdir")
    self.write(self.FINGERPRINT, json.dumps(fingerprint, indent=1))

  def write_config(self, config: ml_collections.ConfigDict, model_folder,
                   spec: model_spec.ModelSpec) -> None:
    """Writes config.json and copies the small model files (not the weights); the
    saved-model spec goes to model/jaxembed.json, so loading needs nothing else."""
    hf_config = os.path.join(model_folder.path, "config.json")
    if os.path.isfile(hf_config):
      with open(hf_config) as f:
        self.write(f"{self.MODEL_DIR}/config.json", f.read())
    else:   # weights from an ONNX file: the config comes from its shapes
      self.write(f"{self.MODEL_DIR}/config.json",
                 json.dumps(model_folder.encoder_config.to_hf()))
    with open(model_folder.tokenizer) as f:
      self.write(f"{self.MODEL_DIR}/tokenizer.json", f.read())
    self.write(f"{self.MODEL_DIR}/{model_spec.FILENAME}", spec.to_json())
    self.write(self.CONFIG, config.to_json_best_effort(indent=1))
    self.write(self.VERSION, json.dumps(provenance(), indent=1))

  def _entries(self, name: str) -> list[tuple[str, dict]]:
    """(line, record) of each complete JSON line of a log; a line torn by a crash
    mid-write is dropped."""
    if not self.exists(name):
      return []
    entries = []
    for l in (self / name).read_text().splitlines():
      if not l.strip():
        continue
      try:
        entries.append((l + "\n", json.loads(l)))
      except json.JSONDecodeError:
        logging.warning("%s: dropping a torn line: %.80s", self / name, l)
    return entries

  def read_log(self, name: str) -> list[dict]:
    return [record for _, record in self._entries(name)]

  def truncate_log(self, last_step: int) -> None:
    """Drops log lines past the restored step (they were written after the last
    checkpoint of a run that then died), so the logs read as one run."""
    for name in (self.TRAIN_LOG, self.EVAL_LOG):
      self.drop_log_entries(name, lambda r: r["step"] > last_step)

  def drop_log_entries(self, name: str, predicate) -> None:
    if self.exists(name):
      self.write(name, "".join(l for l, r in self._entries(name) if not predicate(r)))

  def append_log(self, record: dict, name: str = TRAIN_LOG) -> None:
    if jax.process_index() != 0:
      return
    line = json.dumps(record) + "\n"
    if self.remote:  # bucket objects cannot be appended to: rewrite
      self.write(name, "".join(l for l, _ in self._entries(name)) + line)
      return
    with open(self / name, "a") as f:
      f.write(line)


def _same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


_ABSENT = object()


def _lookup(tree, dotted: str):
  for key in dotted.split("."):
    if not isinstance(tree, dict) or key not in tree:
      return _ABSENT
    tree = tree[key]
  return tree


def _diff(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
  elif not _same(a, b):
    yield prefix.rstrip("."), a, b


def file_fingerprint(path: str) -> dict:
  """{'size', 'sha256'} of a file (read in 1 MiB blocks)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}
