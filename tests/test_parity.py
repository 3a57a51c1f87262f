"""jaxembed's MiniLM against sentence-transformers' own output (a saved fixture made by
tests/fixtures/make_minilm_reference.py)."""

import os

import numpy as np
import pytest

import jaxembed
from conftest import MINILM

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_reference.npz")


@pytest.fixture(scope="module")
def reference():
  return np.load(FIXTURE)


@pytest.fixture(scope="module")
def minilm():
  return jaxembed.load(MINILM)


def test_fixture_is_varied(reference):
  s = [str(x) for x in reference["sentences"]]
  assert len(s) >= 50
  assert any(len(x) > 2000 for x in s), "needs texts past the 256-token truncation"
  assert any(ord(ch) > 127 for x in s for ch in x), "needs unicode"
  assert any(len(x) <= 2 for x in s), "needs very short texts"


def test_matches_sentence_transformers(minilm, reference):
  sentences = [str(x) for x in reference["sentences"]]
  ours = minilm.encode(sentences, batch_size=16)
  theirs = reference["embeddings"]
  cos = np.sum(ours * theirs, axis=1) / (
      np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
  assert cos.min() >= 0.99999, (cos.min(), sentences[int(np.argmin(cos))][:80])
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_every_layer_matches_transformers(minilm, reference):
  """The per-layer sub-models of 2D Matryoshka read the right hidden states."""
  sentences = [str(x) for x in reference["sentences"]]
  ours = minilm.encode_all_layers(sentences, batch_size=16)
  theirs = reference["layer_means"][:, 1:]  # index 0 is the embedding output
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_layer_and_dim_truncation(minilm, reference):
  sentences = [str(x) for x in reference["sentences"][:8]]
  sub = minilm.encode(sentences, layer=3, dim=64, normalize=False)
  expected = reference["layer_means"][:8, 3, :64]
  np.testing.assert_allclose(sub, expected, rtol=1e-4, atol=1e-4)
  normed = minilm.encode(sentences, layer=3, dim=64)
  np.testing.assert_allclose(normed, expected / np.linalg.norm(expected, axis=1,
                                                               keepdims=True), atol=1e-5)


@pytest.mark.parametrize("kw, match", [({"layer": 0}, "1..6"), ({"layer": 7}, "1..6"),
                                       ({"dim": 385}, "1..384")])
def test_bad_layer_or_dim(minilm, kw, match):
  with pytest.raises(ValueError, match=match):
    minilm.encode(["x"], **kw)


def test_a_single_string_gives_one_vector_and_other_types_are_refused(minilm):
  # As in sentence-transformers: encode("text") is encode(["text"])[0].
  np.testing.assert_allclose(minilm.encode("one sentence"),
                             minilm.encode(["one sentence"])[0], atol=1e-6)
  with pytest.raises(TypeError, match="list of strings"):
    minilm.encode(b"bytes are not text")
