"""EmbeddingGemma-300M (a bidirectional Gemma 3: sliding-window and global layers with
two RoPE bases, q/k RMSNorm, 1 + w norms, scaled embeddings, GELU(tanh) MLP; mean
pooling, then Dense 768 -> 3072 -> 768 composed into one head, normalised) from its
real weights against sentence-transformers' vectors, saved as a fixture by
tests/fixtures/make_embeddinggemma_reference.py: no prompt, its `query` and
`document` prompts, truncated to 256 dims, texts past the 512-token window and the
2,048-token limit.

The weights are fetched by `scripts/fetch_weights.sh embeddinggemma-300m` (Gemma
Terms of Use); without them these tests skip, or fail under JAXEMBED_REQUIRE_WEIGHTS."""

import os

import subprocess
import sys

import numpy as np
import pytest

import jaxembed
from conftest import REPO, require_weights

GEMMA = "weights:embeddinggemma-300m"
FIXTURE = os.path.join(REPO, "tests", "fixtures", "embeddinggemma_reference.npz")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
  return np.load(FIXTURE)


@pytest.fixture(scope="module")
def gemma():
  return jaxembed.load(require_weights(GEMMA))


def cosines(a, b):
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_folder_reads_as_embeddinggemma(gemma):
  cfg = gemma.encoder_config
  assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.sliding_window, cfg.attention) == (
              "gemma3", 24, 768, 3, 1, 256, 512, "bidirectional")
  assert cfg.sliding_layers == tuple(i for i in range(24) if i % 6 != 5)
  assert gemma.spec.head and gemma.spec.include_prompt and gemma.max_seq_length == 2048
  assert gemma.prompts["query"] == "task: search result | query: "
  assert gemma.prompts["document"] == "title: none | text: "


@pytest.mark.parametrize("kind, kwargs", [
    ("plain", {}), ("query", {"prompt_name": "query"}),
    ("document", {"prompt_name": "document"}), ("dim256", {"truncate_dim": 256})])
def test_vectors_equal_sentence_transformers(gemma, reference, kind, kwargs):
  sentences = [str(s) for s in reference["sentences"]]
  ours = gemma.encode(sentences, batch_size=4, **kwargs)
  theirs = reference[kind]
  assert ours.shape == theirs.shape
  cos = cosines(ours, theirs)
  assert cos.min() >= 0.9999, (kind, cos.min(), int(np.argmin(cos)))
  if kind == "dim256":                # cut from the normalised output, as the peer
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1),
                               np.linalg.norm(theirs, axis=-1), rtol=1e-4)
  else:
    assert np.abs(ours - theirs).max() < 2e-3


def test_query_and_document_helpers_pick_the_task_prompts(gemma, reference):
  sentences = [str(s) for s in reference["sentences"][:6]]
  assert cosines(gemma.encode_query(sentences), reference["query"][:6]).min() >= 0.9999
  assert cosines(gemma.encode_document(sentences),
                 reference["document"][:6]).min() >= 0.9999


def test_encoding_keeps_host_memory_bounded(tmp_path):
  """A fresh process loading the model and encoding a 2,000-token text: peak RSS, as a
  user runs it (XLA's own optimisation on: the tests' COMPILE_FAST turns it off, and
  unfused attention then holds several [heads, T, T] buffers at once)."""
  require_weights(GEMMA)
  # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
  # child of a test worker that has grown to 4 GiB reports 4 GiB whatever it used.
  script = ("import jaxembed\n"
            f"m = jaxembed.load({GEMMA!r})\n"
            "v = m.encode(['word ' * 2000, 'a short one'])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print('RSS', hwm.split()[1])\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, timeout=900,
                        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert done.returncode == 0, done.stderr[-3000:]
  peak_kib = int(done.stdout.split("RSS")[1])
  print(f"peak RSS {peak_kib / 2**20:.2f} GiB")
  # Measured 2.1-2.5 GiB on a 2-core AMD EPYC: the parameters (1.2 GB) on the device,
  # the runtime, and at load the 0.8 GB embedding table once more while it is copied
  # (each tensor moves to the device as it is read; the table is one tensor).
  assert peak_kib < 2.75 * 2**20, peak_kib



def test_lora_training_keeps_the_head_and_exports_for_the_peer(tmp_path, tfds_dir):
  """EmbeddingGemma fine-tuned a step (LoRA rank 4 on the query and value kernels,
  the Dense head trainable, the encoder frozen, its query prompt as the training
  instruction) -> export -> sentence-transformers loads the folder with our document
  and query vectors and the query prompt. The prompt ends in a space, which Gemma's
  tokenizer encodes alone as a token of its own: the pooled prefix must be counted
  as sentence-transformers counts it for the query vectors to agree."""
  from conftest import subprocess_run_export, run_train
  from sentence_transformers import SentenceTransformer
  require_weights(GEMMA)
  prompt = "task: search result | query: "
  work = tmp_path / "run"
  done = run_train([
      "--config=configs/ood_ablation.py:arm=pairs", f"--workdir={work}",
      f"--config.data.tfds_dir={tfds_dir}", f"--config.model.path={GEMMA}",
      "--config.model.encoder=decoder", "--config.data.pack_length=0",
      "--config.data.seq_len=16", "--config.data.max_train_examples=256",
      f"--config.data.query_instruction={prompt}",
      "--config.train.steps=1", "--config.train.batch_size=4",
      "--config.optim.warmup_steps=0", "--config.optim.lora.rank=4",
      "--config.optim.lora.targets=('query','value')", "--config.optim.trainable=('^head',)",
      "--config.eval.before=False", "--config.eval.layers=(24,)",
      "--config.eval.dims=(128,768)", "--config.loss.matryoshka.layers=(24,)",
      "--config.loss.matryoshka.dims=(128,768)", "--config.eval.wordnet_queries=16",
      "--config.eval.lee=False", "--config.eval.simlex=False", "--config.eval.wordsim=False",
      "--config.eval.polarity=False", "--config.eval.newsgroup=False",
      "--config.eval.ood=()"], timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  texts = ["what is a dog", "the open() system call " * 20, "hello"]
  out = subprocess_run_export(work, tmp_path / "exported")
  peer = SentenceTransformer(out, device="cpu")
  ours = jaxembed.load(out)
  assert cosines(ours.encode(texts), peer.encode(texts)).min() >= 0.99999
  assert peer.prompts.get("query") == prompt and ours.prompts["query"] == prompt
  assert cosines(ours.encode_query(texts),
                 peer.encode_query(texts)).min() >= 0.99999
