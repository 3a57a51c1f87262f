"""A jaxembed model at one (layer, dim) cell as an MTEB encoder.

    import mteb, jaxembed
    from jaxembed.mteb_adapter import MTEBEncoder

    model = jaxembed.load("runs/default")
    encoder = MTEBEncoder(model, layer=2, dim=128)
    results = mteb.evaluate(encoder, mteb.get_tasks(tasks=["STSBenchmark"]))

The class passes `mteb.models.EncoderProtocol` (encode over MTEB's batches,
`similarity`, `similarity_pairwise`, `mteb_model_meta`) and imports nothing from mteb
until MTEB asks for the model's metadata, so it is importable without the `mteb`
extra. Queries (MTEB's prompt type "query") get the model's query prompt, the
instruction it was trained with; documents and symmetric tasks get none, as in
`EmbeddingModel.encode_query` / `encode_document`. Scores are cosine similarities,
the same as jaxembed's own evaluations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxembed.api import EmbeddingModel
from jaxembed.errors import ConfigError
from jaxembed.evals.sts import cosine_rows


def _kind(prompt_type) -> str | None:
  """MTEB's PromptType (an enum of 'query' / 'document') or its string, as a string."""
  return None if prompt_type is None else str(getattr(prompt_type, "value", prompt_type))


class MTEBEncoder:
  """`model` truncated to `layer` blocks and the first `dim` coordinates (defaults:
  the model's own), encoding in batches of `batch_size`."""

  def __init__(self, model: EmbeddingModel, *, layer: int | None = None,
               dim: int | None = None, name: str | None = None, batch_size: int = 64):
    if not isinstance(model, EmbeddingModel):
      raise ConfigError(f"MTEBEncoder needs a jaxembed EmbeddingModel (jaxembed.load), "
                        f"not {type(model).__name__}")
    self.model = model
    self.layer = layer
    self.dim = dim
    self.batch_size = batch_size
    # Checked now (a bad layer or dim fails here, not inside MTEB's loop).
    self.embed_dim = model.encode(["check"], layer=layer, dim=dim).shape[-1]
    cell = f"L{layer or model.default_layer or model.num_layers}_D{self.embed_dim}"
    # MTEB files results under organisation/model: name the cell, or give `name`.
    self.name = name or f"jaxembed/model-{cell}"
    self._meta = None

  def encode(self, inputs, *, task_metadata=None, hf_split: str | None = None,
             hf_subset: str | None = None, prompt_type=None, **kwargs: Any) -> np.ndarray:
    """[n, dim] float32 for the texts of MTEB's batches (each a dict with "text"), in
    order. MTEB's encode kwargs (batch_size, show_progress_bar) are honoured."""
    texts: list[str] = []
    for batch in inputs:
      if "text" not in batch:
        raise ConfigError(f"MTEB gave a batch without text (keys {sorted(batch)}): "
                          "jaxembed encodes text only")
      texts.extend(batch["text"])
    # A query / document gets the model's prompt for it, as sentence-transformers'
    # encode_query / encode_document choose it; other texts the model's default.
    encode = {"query": self.model.encode_query, "document": self.model.encode_document
              }.get(_kind(prompt_type), self.model.encode)
    return encode(texts, layer=self.layer, dim=self.dim,
                  batch_size=kwargs.get("batch_size") or self.batch_size,
                  show_progress_bar=bool(kwargs.get("show_progress_bar")))

  def similarity(self, embeddings1, embeddings2) -> np.ndarray:
    return EmbeddingModel.similarity(embeddings1, embeddings2)

  def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
    return cosine_rows(np.atleast_2d(np.asarray(embeddings1, np.float32)),
                       np.atleast_2d(np.asarray(embeddings2, np.float32)))

  @property
  def mteb_model_meta(self):
    """MTEB's ModelMeta for this cell (name, embedding size, cosine scoring)."""
    if self._meta is None:
      try:
        from mteb.models import ModelMeta  # optional: pip install 'jaxembed[mteb]'
      except ImportError as e:
        raise ImportError("MTEB's model metadata needs the mteb package: "
                          "pip install 'jaxembed[mteb]'") from e
      self._meta = ModelMeta(
          loader=None, name=self.name, revision=None, release_date=None,
          languages=None, n_parameters=None, memory_usage_mb=None,
          max_tokens=self.model.max_seq_length, embed_dim=self.embed_dim, license=None,
          open_weights=None, public_training_code=None, public_training_data=None,
          framework=["JAX"], similarity_fn_name="cosine",
          use_instructions=bool(self.model.prompts), training_datasets=None)
    return self._meta
