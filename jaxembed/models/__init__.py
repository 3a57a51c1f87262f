"""Encoders, pooling, the embedder interface, model building and saved-model specs,
and the loaders of pretrained weights."""

from jaxembed.models.bert import BertConfig, BertEncoder
from jaxembed.models.build import (abstract_params, build_model, model_from_spec, run_spec,
                                   text_encoder_config)
from jaxembed.models.decoder import DecoderConfig, DecoderEncoder
from jaxembed.models.embedder import Embedder
from jaxembed.models.loading import (ModelFolder, load_bert_safetensors, load_encoder_weights,
                                     read_model_folder, resolve_model_path)
from jaxembed.models.pooling import POOLERS, Pooler
from jaxembed.models.spec import ModelSpec
