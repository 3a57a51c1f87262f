"""jaxembed: embedding models in JAX, with Matryoshka sub-models over layers and dims."""

from jaxembed.api import EmbeddingModel
from jaxembed.loaders import load
from jaxembed.version import __version__

__all__ = ["EmbeddingModel", "load", "__version__"]
