"""Encoders, pooling and the loaders of pretrained weights."""

from jaxembed.models.bert import BertConfig, BertEncoder
from jaxembed.models.embedder import Embedder
from jaxembed.models.loading import (ModelFolder, load_bert_safetensors, read_model_folder,
                                     resolve_model_path)
from jaxembed.models.pooling import POOLERS, Pooler
