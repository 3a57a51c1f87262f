"""Metrics as TensorBoard event files (through tensorboardX: no TensorFlow needed).

Only process 0 writes. Training scalars go under `train/`, every evaluated grid cell
under `eval/<task>/<metric>/L<layer>_D<dim>` (as the training losses name cells), so
TensorBoard draws one curve per (layer, dim) sub-model across the run's periodic
evaluations. The names are those of
the JSON logs: jaxembed's metric names use only what TensorBoard allows
([A-Za-z0-9_./-]: 'ndcg_at_10', as MTEB names it), so TensorBoard renames nothing. A
name with another character (a user's task name) becomes '_' there, as TensorBoard
would rename it, without a log line per scalar.
"""

from __future__ import annotations

import logging
import re
import sys

import jax

_ILLEGAL = re.compile(r"[^A-Za-z0-9_./\-]")


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed, only to accept torch tensors; that
  import takes 4 to 8 seconds of every run's start on 2 CPU cores, and we pass it
  floats and NumPy arrays. Unless torch is already loaded (then it costs nothing), the
  import runs with torch marked absent, and torch stays importable afterwards.
  """
  if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None          # `import torch` raises ImportError meanwhile
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def tag(name: str) -> str:
  """A TensorBoard-legal scalar name."""
  return _ILLEGAL.sub("_", name)


class MetricWriter:

  def __init__(self, logdir: str, *, remote: bool = False, purge_step: int | None = None):
    """`purge_step`: a resumed run's first step; TensorBoard hides the points the
    interrupted run had logged from that step on, so each (tag, step) shows once."""
    self._writer = None
    if jax.process_index() != 0:
      return
    if remote:
      logging.warning("TensorBoard events are written for local workdirs only; %s is "
                      "remote (the JSON logs hold the same numbers)", logdir)
      return
    self._writer = _summary_writer_class()(logdir, flush_secs=30, purge_step=purge_step)

  def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(tag(prefix + name), float(value), global_step=int(step))

  def images(self, step: int, images: dict) -> None:
    """RGB images ([H, W, 3] uint8), e.g. the grid's heatmaps."""
    if self._writer is None:
      return
    for name, rgb in images.items():
      self._writer.add_image(tag(name), rgb, global_step=int(step), dataformats="HWC")

  def text(self, name: str, text: str, step: int = 0) -> None:
    """Markdown text, e.g. the run's config (TensorBoard's Text tab)."""
    if self._writer is not None:
      self._writer.add_text(tag(name), text, global_step=int(step))

  def grid(self, step: int, rows: list[dict]) -> None:
    """One scalar per (metric, layer, dim) cell of an evaluated grid."""
    for row in rows:
      cell = f"L{row['layer']}_D{row['dim']}"   # as the training losses' cells
      self.scalars(step, {f"eval/{k}/{cell}": v for k, v in row.items()
                          if k not in ("layer", "dim")})

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
