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

from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.models.embedder import ENCODER_CONFIGS, encoder_config

FILENAME = "jaxembed.json"
FORMAT = "jaxembed-flax-v1"
ARCHITECTURES = ("embedder", "two_tower", "multivector")


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
  # Named prompts beside the query instruction, ((name, text), ...), as a
  # sentence-transformers folder has them; include_prompt: a prompt is pooled with the
  # text (sentence-transformers' default) rather than only attended to (jaxembed's).
  prompts: tuple = ()
  include_prompt: bool = False
  default_prompt_name: str | None = None
  head: bool = False                   # params hold 'head' (Embedder.head)
  # architecture 'multivector': MultiVectorEmbedder's fields (dim, query_length, the
  # marker, [MASK] and skipped token ids, ...), as sorted (name, value) items.
  multivector: tuple = ()
  head_norm: bool = False              # params hold 'head_norm_scale/_bias' (Embedder.head_norm)
  head_width: int = 0                  # the head's real output rows (0: all): dims above refused

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(format=FORMAT, encoder=type(self.encoder).__name__,
             encoder_config=dataclasses.asdict(self.encoder), prompts=dict(self.prompts),
             multivector=dict(self.multivector))
    if not self.multivector:   # a single-vector spec reads as before
      d.pop("multivector")
    if not self.head_norm:
      d.pop("head_norm")
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
    mv = d.pop("multivector", {}) or {}
    if not isinstance(mv, dict):
      raise ModelLoadError(f"{source}: multivector={mv!r} must be an object")
    d["multivector"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                    for k, v in mv.items()))
    prompts = d.pop("prompts", {})
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
      raise ModelLoadError(f"{source}: prompts={prompts!r} must map names to strings")
    try:
      spec = cls(encoder=encoder_config(kind, fields, source), prompts=tuple(sorted(prompts.items())),
                 **d)
    except ModelLoadError:
      raise
    except (TypeError, ValueError, ConfigError) as e:   # a field of the wrong kind
      raise ModelLoadError(f"{source}: {e}") from e
    spec.check(source)
    return spec

  def check(self, source: str = FILENAME) -> None:
    """Refuses a spec whose fields contradict each other or its encoder (a default dim
    wider than the encoder, a layer it does not have)."""
    enc = self.encoder
    if self.architecture != "embedder":
      return
    for name, value, high in (("layer", self.layer, enc.num_layers),
                              ("dim", self.dim, enc.hidden_size)):
      if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                or not 1 <= value <= high):
        raise ModelLoadError(f"{source}: {name}={value!r}; the encoder has {high} "
                             f"{'layers' if name == 'layer' else 'dims'}")
    if not isinstance(self.max_seq_length, int) or self.max_seq_length < 1:
      raise ModelLoadError(f"{source}: max_seq_length={self.max_seq_length!r} must be a "
                           "positive whole number")
    if self.default_prompt_name is not None and self.default_prompt_name not in dict(
        self.prompts) and not (self.default_prompt_name == "query"
                               and self.query_instruction):
      raise ModelLoadError(f"{source}: default_prompt_name={self.default_prompt_name!r} "
                           "is not one of its prompts")

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
