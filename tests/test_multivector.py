"""The multi-vector (late-interaction) model: PyLate loads its export with the same token
vectors (fixture made by PyLate, tests/fixtures/make_pylate_reference.py), a sub-model
exports as its cell, the smoke config trains, evaluates by MaxSim, loads and exports,
and mismatched settings are refused by name."""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from conftest import REPO, run_train
from jaxembed.errors import ConfigError, ModelLoadError

sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
import multivector_model  # noqa: E402

REFERENCE = os.path.join(REPO, "tests", "fixtures", "pylate_reference.npz")


@pytest.fixture(scope="module")
def model():
  return multivector_model.model()


@pytest.mark.parametrize("is_query", [True, False])
def test_encode_multivector_equals_pylate_on_the_export(model, tmp_path, is_query):
  from jaxembed.export import export
  ref = np.load(REFERENCE)
  texts = [str(t) for t in ref["texts"]]
  assert texts == multivector_model.TEXTS
  out = export(model, str(tmp_path / "colbert"))          # auto: PyLate for multi-vector
  modules = json.load(open(os.path.join(out, "modules.json")))
  assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                          "pylate.models.Dense.Dense"]
  dense = safetensors.numpy.load_file(os.path.join(out, "1_Dense", "model.safetensors"))
  np.testing.assert_array_equal(dense["linear.weight"], np.asarray(model.params["projection"])[-1].T)
  ours = model.encode_multivector(texts, is_query=is_query, batch_size=5)
  for i, v in enumerate(ours):
    theirs = ref[f"{'q' if is_query else 'd'}{i}"]
    assert v.shape == theirs.shape, (i, v.shape, theirs.shape)
    assert (v * theirs).sum(-1).min() >= 0.99999, i


def test_a_cell_exports_its_layer_and_dim(model, tmp_path):
  from jaxembed.export import export
  out = export(model, str(tmp_path / "cell"), layer=3, dim=16, format="pylate")
  assert json.load(open(os.path.join(out, "config.json")))["num_hidden_layers"] == 3
  dense = safetensors.numpy.load_file(os.path.join(out, "1_Dense", "model.safetensors"))
  np.testing.assert_array_equal(dense["linear.weight"],
                                np.asarray(model.params["projection"])[2][:, :16].T)
  st = json.load(open(os.path.join(out, "config_sentence_transformers.json")))
  assert (st["query_prefix"], st["document_prefix"], st["query_length"],
          st["document_length"], st["do_query_expansion"]) == ("[unused0]", "[unused1]",
                                                                 32, 180, True)
  # The cell: layer 3's token vectors cut to 16 and normalised again.
  texts = multivector_model.TEXTS[:4]
  cell = model.encode_multivector(texts, layer=3, dim=16)
  full = model.encode_multivector(texts, layer=3)
  for c, f in zip(cell, full):
    ref = f[:, :16] / np.linalg.norm(f[:, :16], axis=-1, keepdims=True)
    np.testing.assert_allclose(c, ref, atol=1e-6)
  with pytest.raises(ConfigError, match="dim=65"):
    export(model, str(tmp_path / "bad"), dim=65, format="pylate")
  with pytest.raises(ConfigError, match="pylate"):
    export(model, str(tmp_path / "st"), format="sentence-transformers")
  with pytest.raises(ConfigError, match="encode_multivector"):
    model.encode(["a text"])


def test_query_marking_and_expansion_match_a_plain_reading_of_pylate(model):
  """The module's own input preparation against a NumPy transcription of PyLate's
  ColBERT.tokenize: tokenize to length - 1, insert the marker after [CLS], queries padded
  with [MASK] to query_length (attention 0 there), all query tokens counted."""
  module, tok = model.module, model.tokenizer
  texts = ["short", "a query " * 40]
  enc = tok.encode(texts)
  ids, mask, counted = (np.asarray(x) for x in module.prepare(
      jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]), is_query=True))
  for r, text in enumerate(texts):
    raw = tok.encode([text])["input_ids"][0]
    raw = list(raw[raw != tok.pad_id])
    if len(raw) > 31:                                  # truncated to 31, [SEP] kept
      raw = raw[:30] + [raw[-1]]
    want = [raw[0], module.query_prefix_id] + raw[1:]
    want_mask = [1] * len(want) + [0] * (32 - len(want))
    want = want + [module.mask_id] * (32 - len(want))
    assert list(ids[r]) == want and list(mask[r]) == want_mask
    assert counted[r].all()
  d_ids, _, d_counted = (np.asarray(x) for x in module.prepare(
      jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]), is_query=False))
  assert d_ids[0, 1] == module.document_prefix_id
  comma = tok.encode(["a, b"])["input_ids"][0][2]     # [CLS] a , b [SEP]
  assert comma in module.skip_ids


def test_smoke_config_trains_evaluates_loads_and_exports(tmp_path):
  import jaxembed
  from jaxembed.export import export
  workdir = tmp_path / "run"
  done = run_train(["--config=configs/colbert_minilm.py:smoke,matryoshka",
                    f"--workdir={workdir}"])
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.load(open(workdir / "metrics.json"))["after"]
  assert {(r["layer"], r["dim"]) for r in rows} == {(l, d) for l in (1, 2) for d in (4, 8, 16)}
  assert all(0 <= r["wordnet/mrr_at_10"] <= 1 for r in rows)
  model = jaxembed.load(str(workdir))
  assert model.multivector
  q = model.encode_multivector(["what is a dog"], is_query=True)[0]
  d = model.encode_multivector(["a dog barks, loudly."], is_query=False)[0]
  assert q.shape == (32, 16) and d.shape[1] == 16 and d.shape[0] < 10
  np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1, atol=1e-5)
  out = export(model, str(tmp_path / "export"))
  assert os.path.isfile(os.path.join(out, "1_Dense", "model.safetensors"))
  with pytest.raises(ModelLoadError, match="PyLate"):
    jaxembed.load(out)


@pytest.mark.parametrize("overrides, message", [
    ({"loss.name": "info_nce"}, "token vectors"),
    ({"model.multivector.dim": 0}, "token vectors"),
    ({"model.multivector.query_prefix": "[not-a-token]"}, "query_prefix"),
    ({"train.grad_cache_minibatch": 4}, "grad_cache_minibatch"),
])
def test_mismatched_settings_are_refused_by_name(overrides, message, tfds_dir):
  from configs import colbert_minilm
  from configs.common import override
  from jaxembed.train.run import setup
  config = override(colbert_minilm.get_config("smoke"), overrides)
  config.data.tfds_dir = tfds_dir
  with pytest.raises(ConfigError, match=message):
    setup(config, "/nonexistent")


def test_crisp_smoke_trains_and_exports_as_flax(tmp_path):
  """Clustered in the forward pass: 2 query and 4 document centroids per text; PyLate
  cannot reproduce that, so auto exports Flax and --format=pylate is refused."""
  import jaxembed
  from jaxembed.export import export
  workdir = tmp_path / "run"
  done = run_train(["--config=configs/colbert_minilm.py:smoke,crisp=2:4",
                    f"--workdir={workdir}", "--config.eval.before=False"])
  assert done.returncode == 0, done.stderr[-3000:]
  model = jaxembed.load(str(workdir))
  docs = model.encode_multivector(["a dog barks loudly at night", "hi"])
  assert [d.shape for d in docs] == [(4, 16), (4, 16)]   # "hi": [CLS] [D] hi [SEP]
  assert model.encode_multivector(["what barks"], is_query=True)[0].shape == (2, 16)
  with pytest.raises(ConfigError, match="k-means"):
    export(model, str(tmp_path / "pylate"), format="pylate")
  out = export(model, str(tmp_path / "flax"))
  again = jaxembed.load(out)
  np.testing.assert_allclose(again.encode_multivector(["a dog barks loudly at night"])[0],
                             docs[0], atol=1e-6)
