"""all-mpnet-base-v2 (MPNet: relative-position bias, position ids from the padding
index, no token types) from its real weights: every layer against transformers and
the pooled vector against sentence-transformers (a saved fixture, made by
tests/fixtures/make_mpnet_reference.py); its export loads in sentence-transformers
with our vectors; it fine-tunes over the (layer, dim) grid.

The weights are fetched by scripts/fetch_weights.sh (CI does); without them these
tests skip, or fail under JAXEMBED_REQUIRE_WEIGHTS."""

import os

import numpy as np
import pytest

import jaxembed
from conftest import REPO, require_weights, run_train

MPNET = "weights:all-mpnet-base-v2"
FIXTURE = os.path.join(REPO, "tests", "fixtures", "mpnet_reference.npz")


@pytest.fixture(scope="module")
def reference():
  return np.load(FIXTURE)


@pytest.fixture(scope="module")
def mpnet():
  return jaxembed.load(require_weights(MPNET))


def cosines(a, b):
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_folder_reads_as_mpnet(mpnet):
  cfg = mpnet.encoder_config
  assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.relative_buckets,
          cfg.pad_token_id, cfg.type_vocab_size) == ("mpnet", 12, 768, 32, 1, 0)
  assert mpnet.max_seq_length == 384 and mpnet.tokenizer.pad_id == 1
  assert mpnet.pooling == "mean" and mpnet.default_normalize


def test_every_layer_equals_transformers(mpnet, reference):
  sentences = [str(s) for s in reference["sentences"]]
  assert max(len(mpnet.tokenizer.encode([s])["input_ids"][0]) for s in sentences) == 384
  ours = mpnet.encode_all_layers(sentences, batch_size=8)
  theirs = reference["layer_means"][:, 1:]
  assert ours.shape == theirs.shape == (len(sentences), 12, 768)
  for layer in range(12):
    err = np.abs(ours[:, layer] - theirs[:, layer]).max() / np.abs(theirs[:, layer]).max()
    assert err < 1e-5, (layer + 1, err)


def test_pooled_vectors_equal_sentence_transformers(mpnet, reference):
  sentences = [str(s) for s in reference["sentences"]]
  cos = cosines(mpnet.encode(sentences, batch_size=8), reference["embeddings"])
  assert cos.min() >= 0.99999, (cos.min(), sentences[int(np.argmin(cos))][:60])


def test_left_padding_and_packed_rows_give_the_same_vectors(mpnet):
  """MPNet's absolute positions count real tokens, its relative ones come from token
  indices: a text padded on the left, or packed into a row with another, must give
  the vector it gets alone."""
  import jax.numpy as jnp
  texts = ["a dog runs in the park", "hello there"]
  alone = mpnet.encode(texts, normalize=False)
  tok = mpnet.tokenizer
  ids = [tok.encode([t])["input_ids"][0] for t in texts]
  ids = [row[row != tok.pad_id] for row in ids]
  n0, n1 = len(ids[0]), len(ids[1])
  packed = {"input_ids": jnp.asarray(np.concatenate(ids))[None],
            "segment_ids": jnp.asarray([[1] * n0 + [2] * n1]),
            "position_ids": jnp.asarray([list(range(n0)) + list(range(n1))])}
  width = max(n0, n1)
  index = np.full((2, width), n0 + n1, np.int32)   # past the row: never pooled
  index[0, :n0], index[1, :n1] = np.arange(n0), n0 + np.arange(n1)
  mask = (np.arange(width)[None] < np.array([[n0], [n1]])).astype(np.int32)
  out = mpnet.module.apply({"params": mpnet.params}, jnp.zeros((2, width), jnp.int32),
                           jnp.asarray(mask), packed={k: jnp.pad(v, ((0, 0), (0, 1)))
                                                       for k, v in packed.items()},
                           token_index=jnp.asarray(index))
  np.testing.assert_allclose(np.asarray(out[:, -1]), alone, rtol=1e-4, atol=1e-5)
  left = np.full((2, width), tok.pad_id, np.int32)
  left[0, width - n0:], left[1, width - n1:] = ids[0], ids[1]
  out = mpnet.module.apply({"params": mpnet.params}, jnp.asarray(left),
                           jnp.asarray((left != tok.pad_id).astype(np.int32)))
  np.testing.assert_allclose(np.asarray(out[0, -1]), alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_export_loads_in_sentence_transformers_with_our_vectors(mpnet, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  from jaxembed.export import export
  out = export(mpnet, str(tmp_path / "mpnet_l8_d256"), layer=8, dim=256)
  texts = ["a dog runs in the park", "photosynthesis converts light", "hi"]
  ours = jaxembed.load(out).encode(texts)
  np.testing.assert_allclose(ours, mpnet.encode(texts, layer=8, dim=256), atol=1e-5)
  theirs = st.SentenceTransformer(out, device="cpu").encode(texts)
  assert cosines(ours, theirs).min() >= 0.99999


@pytest.mark.slow
def test_mpnet_fine_tunes_over_the_grid(tmp_path, tfds_dir):
  require_weights(MPNET)
  work = tmp_path / "run"
  done = run_train(["--config=configs/mpnet_wordnet_2d.py:smoke", f"--workdir={work}",
                    f"--config.data.tfds_dir={tfds_dir}"], timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  import json
  log = [json.loads(l) for l in (work / "train_log.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
  trained = jaxembed.load(str(work))
  start = jaxembed.load(MPNET)
  moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
      *(jax_leaves(m.params["encoder"]) for m in (trained, start)))]
  assert max(moved) > 0     # full fine-tuning: the encoder's weights moved


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


@pytest.mark.slow
def test_mpnet_round_trip_through_the_peer(tmp_path, tfds_dir):
  """all-mpnet-base-v2 saved by sentence-transformers 6 -> 10 training steps with a
  query instruction -> export -> the peer loads it, prompt included, with our vectors."""
  st = pytest.importorskip("sentence_transformers")
  from conftest import st_round_trip
  from jaxembed.models.loading import resolve_model_path
  saved = tmp_path / "mpnet_st6"
  st.SentenceTransformer(resolve_model_path(require_weights(MPNET)), device="cpu").save(
      str(saved))
  texts = ["a dog runs in the park", "photosynthesis converts light", "hi"]
  r = st_round_trip(str(saved), tmp_path, tfds_dir, texts)
  assert r["prompts"][0] == {"query": "query: "}
  for ours, theirs in (("ours_q", "peer_q"), ("ours_d", "peer_d"), ("trained_q", "peer_q")):
    assert cosines(r[ours], r[theirs]).min() >= 0.99999, (ours, theirs)
