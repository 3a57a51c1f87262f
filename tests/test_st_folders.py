"""sentence-transformers folders as its current version writes them load with the
vectors, prompts and lengths the peer gives; modules jaxembed does not implement are
refused by name, never dropped; non-finite weights and broken configs are refused on
every load path. The peer (sentence-transformers, in this process) is the reference."""

import json
import shutil

import numpy as np
import pytest

import jaxembed
from conftest import MINILM
from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.models.loading import resolve_model_path

st = pytest.importorskip("sentence_transformers")

TEXTS = ["a dog runs in the park", "the stock market fell sharply today",
         "photosynthesis converts light into chemical energy", "hello",
         " ".join(["a long text about many things"] * 60)]     # past 256 tokens


def cosines(a, b):
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  return (a * b).sum(-1)


@pytest.fixture(scope="module")
def peer():
  return st.SentenceTransformer(resolve_model_path(MINILM), device="cpu")


@pytest.fixture(scope="module")
def saved(peer, tmp_path_factory):
  """A folder saved, unchanged, by the installed sentence-transformers."""
  out = tmp_path_factory.mktemp("st") / "minilm"
  peer.save(str(out))
  return out


def copy_of(saved, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(saved, out)
  return out


def edit_json(path, fn):
  path.write_text(json.dumps(fn(json.loads(path.read_text())), indent=1))


def test_a_folder_saved_by_the_installed_peer_loads_with_its_vectors(peer, saved):
  model = jaxembed.load(str(saved))
  assert model.max_seq_length == peer.max_seq_length == 256
  np.testing.assert_array_less(0.99999, cosines(model.encode(TEXTS), peer.encode(TEXTS)))


@pytest.mark.parametrize("pooling", [
    {"embedding_dimension": 384, "pooling_mode": "cls"},       # sentence-transformers 6
    {"embedding_dimension": 384, "pooling_mode": ["cls"]},
    {"word_embedding_dimension": 384, "pooling_mode_cls_token": True,   # before 6
     "pooling_mode_mean_tokens": False}])
def test_pooling_configs_of_every_version_read_the_same(saved, tmp_path, pooling):
  out = copy_of(saved, tmp_path)
  (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
  model = jaxembed.load(str(out))
  assert model.pooling == "cls"
  peer = st.SentenceTransformer(str(out), device="cpu")
  np.testing.assert_array_less(0.99999, cosines(model.encode(TEXTS), peer.encode(TEXTS)))


@pytest.mark.parametrize("module, match", [
    ({"type": "sentence_transformers.models.WeightedLayerPooling", "path": "3_Weighted"},
     r"module 3 \('sentence_transformers.models.WeightedLayerPooling'\) is not one "
     r"jaxembed implements"),
    ({"type": "my_package.CustomHead", "path": "3_Custom"},
     r"module 3 \('my_package.CustomHead'\) is not one jaxembed implements"),
])
def test_a_module_jaxembed_lacks_is_refused_by_name(saved, tmp_path, module, match):
  out = copy_of(saved, tmp_path)
  edit_json(out / "modules.json", lambda m: m + [dict(module, idx=3, name="3")])
  with pytest.raises(ModelLoadError, match=match):
    jaxembed.load(str(out))


@pytest.mark.parametrize("dense", [None, 256])
def test_a_layer_norm_module_loads_and_exports_as_the_peer_computes(peer, tmp_path, dense):
  """Pooling -> [Dense 384->256] -> LayerNorm (random scale and shift) -> Normalize, as
  sentence-transformers saves it: jaxembed's vectors equal the peer's, and its export
  (the Dense chain, the LayerNorm, a Matryoshka cut after it) loads in the peer with
  the vectors jaxembed gives for that cell."""
  import torch
  from jaxembed.export import export
  torch.manual_seed(0)
  modules = [peer[0], peer[1]]
  width = dense or 384
  if dense:
    modules.append(st.models.Dense(384, dense, bias=False,
                                   activation_function=torch.nn.Identity()))
  norm = st.models.LayerNorm(width)
  norm.norm.weight.data.uniform_(0.5, 1.5)
  norm.norm.bias.data.normal_(0, 0.1)
  folder = str(tmp_path / "with_norm")
  st.SentenceTransformer(modules=modules + [norm, st.models.Normalize()],
                         device="cpu").save(folder)
  theirs = st.SentenceTransformer(folder, device="cpu").encode(TEXTS)
  model = jaxembed.load(folder)
  assert model.spec.head_norm
  np.testing.assert_array_less(0.99999, cosines(model.encode(TEXTS), theirs))
  for dim in (None, 64):
    out = export(model, str(tmp_path / f"export_{dim}"), dim=dim, format="sentence-transformers")
    again = st.SentenceTransformer(out, device="cpu").encode(TEXTS)
    np.testing.assert_array_less(0.99999, cosines(model.encode(TEXTS, dim=dim), again))
    assert again.shape[1] == (dim or width)


def test_a_dense_module_with_an_activation_is_refused(saved, tmp_path):
  import safetensors.numpy
  out = copy_of(saved, tmp_path)
  (out / "2_Dense").mkdir()
  (out / "2_Dense" / "config.json").write_text(json.dumps(
      {"in_features": 384, "out_features": 384, "bias": False,
       "activation_function": "torch.nn.modules.activation.Tanh"}))
  safetensors.numpy.save_file({"linear.weight": np.eye(384, dtype=np.float32)},
                              str(out / "2_Dense" / "model.safetensors"))
  edit_json(out / "modules.json", lambda m: m[:2] + [
      {"idx": 2, "name": "2", "path": "2_Dense",
       "type": "sentence_transformers.models.Dense"}] + [dict(m[2], idx=3, name="3")])
  with pytest.raises(ModelLoadError, match=r"2_Dense/config.json: activation_function="
                                           r"'torch.nn.modules.activation.Tanh'"):
    jaxembed.load(str(out))


def test_prompts_that_the_peer_pools_are_pooled(saved, tmp_path):
  """A folder's own prompts (include_prompt true, sentence-transformers' default) and
  its default prompt name give the peer's vectors for each argument."""
  out = copy_of(saved, tmp_path)
  prompts = {"query": "search query: ", "document": "search document: ", "other": "x: "}
  edit_json(out / "config_sentence_transformers.json",
            lambda c: dict(c, prompts=prompts, default_prompt_name="other"))
  model = jaxembed.load(str(out))
  peer = st.SentenceTransformer(str(out), device="cpu")
  assert model.prompts == prompts
  texts = TEXTS[:4]
  pairs = {"default": (model.encode(texts), peer.encode(texts)),
           "query": (model.encode(texts, prompt_name="query"),
                     peer.encode(texts, prompt_name="query")),
           "encode_query": (model.encode_query(texts), peer.encode_query(texts)),
           "encode_document": (model.encode_document(texts), peer.encode_document(texts)),
           "prompt": (model.encode(texts, prompt="free: "), peer.encode(texts, prompt="free: "))}
  for name, (ours, theirs) in pairs.items():
    assert cosines(ours, theirs).min() > 0.99999, name
  assert cosines(pairs["default"][0], pairs["query"][0]).max() < 0.999


def test_an_exported_query_prompt_comes_back_on_reload(tmp_path):
  """Export writes the query instruction as the 'query' prompt (include_prompt false);
  loading the export gives it back, so encode_query and MTEB keep the instruction."""
  import dataclasses
  from jaxembed.export import export
  base = jaxembed.load(MINILM)
  model = jaxembed.api.EmbeddingModel(
      dataclasses.replace(base.spec, query_instruction="Represent the question: "),
      base.params, base.tokenizer)
  out = export(model, str(tmp_path / "out"), layer=6)
  pooling = json.loads((tmp_path / "out" / "1_Pooling" / "config.json").read_text())
  assert pooling["pooling_mode"] == "mean" and pooling["include_prompt"] is False
  back = jaxembed.load(out)
  assert back.prompts == {"query": "Represent the question: "}
  texts = TEXTS[:4]
  peer = st.SentenceTransformer(out, device="cpu")
  for ours, theirs in ((back.encode_query(texts), peer.encode(texts, prompt_name="query")),
                       (back.encode_query(texts), model.encode_query(texts)),
                       (back.encode(texts), peer.encode(texts))):
    assert cosines(ours, theirs).min() > 0.99999
  from jaxembed.mteb_adapter import MTEBEncoder
  mteb_queries = MTEBEncoder(back).encode([{"text": texts}], prompt_type="query")
  assert cosines(mteb_queries, peer.encode(texts, prompt_name="query")).min() > 0.99999


def test_sentence_transformers_arguments_give_the_peers_output(peer):
  model = jaxembed.load(MINILM)
  texts = TEXTS[:4]
  for kwargs in ({"normalize_embeddings": False}, {"normalize_embeddings": True},
                 {"truncate_dim": 64}, {"truncate_dim": 64, "normalize_embeddings": True}):
    np.testing.assert_allclose(model.encode(texts, **kwargs), peer.encode(texts, **kwargs),
                               atol=2e-5, err_msg=str(kwargs))
  for kwargs in ({}, {"prompt": "query: "}):
    ours = model.encode(texts, output_value="token_embeddings", **kwargs)
    theirs = peer.encode(texts, output_value="token_embeddings", **kwargs)
    assert [len(o) for o in ours] == [len(t) for t in theirs]
    for o, t in zip(ours, theirs):
      np.testing.assert_allclose(o, np.asarray(t), rtol=1e-4, atol=1e-4)


def test_non_finite_weights_are_refused_on_every_load_path(saved, tmp_path):
  import safetensors.numpy
  out = copy_of(saved, tmp_path)
  tensors = safetensors.numpy.load_file(str(out / "model.safetensors"))
  name = next(k for k in tensors if k.endswith("encoder.layer.2.output.dense.weight"))
  tensors[name][0, 0] = np.nan
  safetensors.numpy.save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(ModelLoadError, match=r"model.safetensors holds non-finite weights"):
    jaxembed.load(str(out))


@pytest.mark.parametrize("field, value, match", [
    ("hidden_size", "32", r"config.json: hidden_size='32' must be a whole number"),
    ("num_hidden_layers", 10**9, r"config.json: num_hidden_layers=1000000000"),
    ("layer_norm_eps", "tiny", r"config.json: layer_norm_eps='tiny' must be a finite"),
    ("vocab_size", None, r"config.json: 'vocab_size' is missing"),
])
def test_a_broken_config_json_is_one_error_naming_the_file(saved, tmp_path, field, value,
                                                           match):
  out = copy_of(saved, tmp_path)
  edit_json(out / "config.json", lambda c: (
      {k: v for k, v in c.items() if k != field} if value is None else dict(c, **{field: value})))
  with pytest.raises(ModelLoadError, match=match):
    jaxembed.load(str(out))
  (out / "config.json").write_text("{ not json")
  with pytest.raises(ModelLoadError, match=r"config.json: not readable JSON"):
    jaxembed.load(str(out))


def test_a_saved_spec_that_contradicts_its_encoder_is_refused(tmp_path):
  from jaxembed.export import export
  out = export(jaxembed.load(MINILM), str(tmp_path / "flax"), format="flax")
  spec_file = tmp_path / "flax" / "jaxembed.json"
  good = json.loads(spec_file.read_text())
  for change, match in (({"dim": 1000}, r"dim=1000; the encoder has 384 dims"),
                        ({"layer": 0}, r"layer=0; the encoder has 6 layers"),
                        ({"encoder_config": dict(good["encoder_config"], hidden_size="32")},
                         r"hidden_size='32' must be a whole number")):
    spec_file.write_text(json.dumps(dict(good, **change)))
    with pytest.raises(ModelLoadError, match=r"jaxembed.json: " + match):
      jaxembed.load(out)


def test_one_text_is_not_padded_to_the_batch_size(monkeypatch):
  """encode pads a batch's rows to a power of two, not to batch_size (one text at
  batch_size=1024 used to run a 1024-row batch)."""
  model = jaxembed.load(MINILM)
  encoder = model._layer_encoder(model.num_layers)      # what encode() runs
  forward, rows = encoder._forward, []
  monkeypatch.setitem(encoder.__dict__, "_forward", lambda p, ids, mask, pool: (
      rows.append(ids.shape[0]) or forward(p, ids, mask, pool)))
  one = model.encode(["hello"], batch_size=1024)
  assert rows == [1]
  model.encode(TEXTS[:3], batch_size=1024)
  assert rows[1:] == [4]
  np.testing.assert_allclose(one, model.encode(["hello", "x"], batch_size=2)[:1], atol=1e-5)
  with pytest.raises(ConfigError, match="batch_size"):
    model.encode(["hello"], batch_size=0)


@pytest.fixture(scope="module")
def with_head(peer, tmp_path_factory):
  """MiniLM -> mean -> Dense 384->256 (no bias) -> LayerNorm (random) -> Normalize."""
  import torch
  torch.manual_seed(1)
  norm = st.models.LayerNorm(256)
  norm.norm.weight.data.uniform_(0.5, 1.5)
  norm.norm.bias.data.normal_(0, 0.1)
  out = tmp_path_factory.mktemp("st") / "with_head"
  st.SentenceTransformer(modules=[
      peer[0], peer[1], st.models.Dense(384, 256, bias=False,
                                        activation_function=torch.nn.Identity()),
      norm, st.models.Normalize()], device="cpu").save(str(out))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["saved", "with_head"])
def test_a_peer_saved_folder_trains_exports_and_loads_back_in_the_peer(request, folder,
                                                                       tmp_path, tfds_dir):
  """A folder saved by the installed sentence-transformers (plain, or with a Dense
  chain and a LayerNorm after pooling, trained with the encoder) -> train 10 steps with
  a query instruction -> export -> the peer loads it, prompt included, with our
  vectors."""
  from conftest import st_round_trip
  r = st_round_trip(str(request.getfixturevalue(folder)), tmp_path, tfds_dir, TEXTS[:4])
  if folder == "with_head":
    kinds = [m["type"].rsplit(".", 1)[-1] for m in
             json.loads((tmp_path / "exported" / "modules.json").read_text())]
    assert kinds[2:] == ["Dense", "LayerNorm", "Normalize"], kinds
    assert r["ours_d"].shape[1] == 256
  assert r["prompts"][0] == {"query": "query: "}
  assert r["prompts"][1].get("query") == "query: "
  for ours, theirs in (("ours_q", "peer_q"), ("ours_d", "peer_d"), ("trained_q", "peer_q")):
    assert cosines(r[ours], r[theirs]).min() >= 0.99999, (ours, theirs)


def test_a_config_that_would_drop_a_folders_head_is_refused(with_head, smoke_config,
                                                            tmp_path):
  """A random init (or a two-tower or multi-vector model) has no place for the folder's
  Dense chain and LayerNorm: refused by name, not trained without them."""
  from jaxembed.train.run import setup
  config = smoke_config(**{"model.path": str(with_head)})     # the smoke model: random
  with pytest.raises(ConfigError, match="Dense / LayerNorm modules"):
    setup(config, str(tmp_path))


def test_training_without_the_folders_prompts_says_so(saved, tmp_path, smoke_config,
                                                      caplog):
  """EmbeddingGemma-style prompts in the folder, a run without data.query_instruction:
  a warning names them (the trained model keeps only what it trained with)."""
  import logging
  from jaxembed.train.run import setup
  out = copy_of(saved, tmp_path)
  edit_json(out / "config_sentence_transformers.json",
            lambda c: dict(c, prompts={"query": "task: search | query: ", "document": ""}))
  with caplog.at_level(logging.WARNING):
    setup(smoke_config(**{"model.path": str(out)}), str(tmp_path / "run"))
  assert "task: search | query: " in caplog.text and "data.query_instruction" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    setup(smoke_config(**{"model.path": str(out),
                          "data.query_instruction": "task: search | query: "}),
          str(tmp_path / "run2"))
  assert "does not train with" not in caplog.text
