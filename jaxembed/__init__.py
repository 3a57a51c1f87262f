"""jaxembed: embedding models in JAX, with Matryoshka sub-models over layers and dims."""

from jaxembed.api import EmbeddingModel, load

__all__ = ["EmbeddingModel", "load"]
