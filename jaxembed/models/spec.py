"""The description of a saved model (`jaxembed.json`): one dataclass, one writer, one
reader, used by a training workdir (`model/jaxembed.json`), by `export` (a Flax folder)
and by `jaxembed.load`.

Files written before this spec existed are read too: `from_dict` fills the fields
they lack with the values those versions implied.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jaxembed.errors import ModelLoadError
from jaxembed.models.embedder import ENCODER_CONFIGS, encoder_config

FILENAME = "jaxembed.json"
FORMAT = "jaxembed-flax-v1"
ARCHITECTURES = ("embedder", "two_tower")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  encoder: Any                         # BertConfig | DecoderConfig (the text encoder)
  pooling: str = "mean"
  pool_heads: int = 8
  pool_latents: int = 64
  centred_exits: bool = False          # params hold 'exit_center' (Embedder)
  exit_components: int = 0             # params hold 'exit_components' (Embedder)
  max_seq_length: int = 512
  padding_side: str = "right"
  normalize: bool = True
  layer: int | None = None             # the sub-model `encode` uses by default
  dim: int | None = None
  query_instruction: str = ""          # prepended to queries, attended but not pooled
  architecture: str = "embedder"       # embedder | two_tower (not loadable as text)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(format=FORMAT, encoder=type(self.encoder).__name__,
             encoder_config=dataclasses.asdict(self.encoder))
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_dict(cls, d: dict, source: str = FILENAME) -> "ModelSpec":
    d = dict(d)
    d.pop("format", None)
    if "centered_exits" in d:     # the spelling of files written before 0.2
      d.setdefault("centred_exits", d.pop("centered_exits"))
    kind, fields = d.pop("encoder", None), d.pop("encoder_config", None)
    if kind not in ENCODER_CONFIGS or not isinstance(fields, dict):
      raise ModelLoadError(f"{source}: no encoder config (encoder={kind!r}); valid "
                           f"encoders: {sorted(ENCODER_CONFIGS)}")
    known = {f.name for f in dataclasses.fields(cls)} - {"encoder"}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ModelLoadError(f"{source}: unknown fields {unknown}; written by a newer "
                           "jaxembed?")
    if d.get("architecture", "embedder") not in ARCHITECTURES:
      raise ModelLoadError(f"{source}: architecture={d['architecture']!r}; valid: "
                           f"{list(ARCHITECTURES)}")
    return cls(encoder=encoder_config(kind, fields), **d)

  @classmethod
  def from_json(cls, text: str, source: str = FILENAME) -> "ModelSpec":
    try:
      return cls.from_dict(json.loads(text), source)
    except json.JSONDecodeError as e:
      raise ModelLoadError(f"{source}: not valid JSON ({e})") from e


def write(path, spec: ModelSpec) -> None:
  """Writes `spec` to the file `path` (a str or an etils/pathlib path)."""
  with open(path, "w") if isinstance(path, str) else path.open("w") as f:
    f.write(spec.to_json() + "\n")


def read(path) -> ModelSpec:
  with open(path) if isinstance(path, str) else path.open() as f:
    return ModelSpec.from_json(f.read(), str(path))
