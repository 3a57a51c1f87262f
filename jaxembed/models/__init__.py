"""Encoders, pooling and the loaders of pretrained weights."""

from jaxembed.models.bert import BertConfig, BertEncoder
from jaxembed.models.embedder import Embedder
from jaxembed.models.decoder import DecoderConfig, DecoderEncoder
from jaxembed.models.loading import (ModelFolder, load_bert_safetensors, load_encoder_weights,
                                     read_model_folder,
                                     resolve_model_path)
from jaxembed.models.pooling import POOLERS, Pooler
