"""`encode` takes sentence-transformers' arguments with their meanings: each call is
checked against the equivalent jaxembed call (or a slow reference)."""

import jax
import numpy as np
import pytest

import jaxembed
from conftest import MINILM
from jaxembed.errors import ConfigError

TEXTS = ["a dog runs in the park", "the stock market fell sharply today",
         "photosynthesis converts light into chemical energy", "a puppy plays outside",
         "interest rates rose again", "hello"]


@pytest.fixture(scope="module")
def model():
  return jaxembed.load(MINILM)


@pytest.fixture(scope="module")
def base(model):
  return model.encode(TEXTS, layer=3)


def test_single_string_gives_one_vector(model, base):
  v = model.encode(TEXTS[1], layer=3)
  assert v.shape == (384,)
  np.testing.assert_allclose(v, base[1], atol=1e-6)


def test_aliases_equal_jaxembed_arguments(model, base):
  # sentence-transformers' truncate_dim cuts the model's (normalised) output and does
  # not re-normalise; jaxembed's dim is the Matryoshka sub-model, normalised.
  np.testing.assert_allclose(model.encode(TEXTS, layer=3, truncate_dim=64), base[:, :64],
                             atol=1e-6)
  np.testing.assert_allclose(model.encode(TEXTS, layer=3, dim=64),
                             base[:, :64] / np.linalg.norm(base[:, :64], axis=-1,
                                                           keepdims=True), atol=1e-6)
  np.testing.assert_allclose(
      model.encode(TEXTS, layer=3, truncate_dim=64, normalize_embeddings=True),
      model.encode(TEXTS, layer=3, dim=64), atol=1e-6)
  # normalize_embeddings=False leaves the model's output as it is (normalised here);
  # jaxembed's normalize=False gives the raw pooled vector.
  np.testing.assert_allclose(model.encode(TEXTS, layer=3, normalize_embeddings=False), base,
                             atol=1e-6)
  raw = model.encode(TEXTS, layer=3, normalize=False)
  assert not np.allclose(np.linalg.norm(raw, axis=-1), 1.0)
  with pytest.raises(ConfigError, match="not both"):
    model.encode(TEXTS, dim=64, truncate_dim=32)
  with pytest.raises(ConfigError, match="output_value=None; valid"):
    model.encode(TEXTS, output_value=None)
  np.testing.assert_allclose(model.encode(TEXTS, layer=3, show_progress_bar=True), base,
                             atol=1e-6)
  np.testing.assert_allclose(model.encode(TEXTS, layer=3, device="cpu"), base, atol=1e-6)
  as_list = model.encode(TEXTS, layer=3, convert_to_numpy=False)
  assert isinstance(as_list, list) and len(as_list) == len(TEXTS)
  np.testing.assert_allclose(np.stack(as_list), base, atol=1e-6)
  tensor = model.encode(TEXTS, layer=3, convert_to_tensor=True)
  assert isinstance(tensor, jax.Array)
  np.testing.assert_allclose(np.asarray(tensor), base, atol=1e-6)
  with_prompt = model.encode(TEXTS, layer=3, prompt="query: ")
  np.testing.assert_allclose(with_prompt, model.encode(TEXTS, layer=3, instruction="query: "),
                             atol=1e-6)
  assert not np.allclose(with_prompt, base, atol=1e-3)
  assert model.get_sentence_embedding_dimension() == 384
  assert model.max_seq_length == model.tokenizer.max_length


def test_prompt_names_and_query_document_helpers(model, base):
  import dataclasses
  from jaxembed.api import EmbeddingModel
  spec = dataclasses.replace(model.spec, query_instruction="Represent this query: ")
  tuned = EmbeddingModel(spec, model.params, model.tokenizer)
  assert tuned.prompts == {"query": "Represent this query: "}
  want = tuned.encode(TEXTS, layer=3, instruction="Represent this query: ")
  np.testing.assert_allclose(tuned.encode(TEXTS, layer=3, prompt_name="query"), want, atol=1e-6)
  np.testing.assert_allclose(tuned.encode_query(TEXTS, layer=3), want, atol=1e-6)
  np.testing.assert_allclose(tuned.encode_document(TEXTS, layer=3), base, atol=1e-6)
  with pytest.raises(ConfigError, match="prompt_name='passage'.*valid: \\['query'\\]"):
    tuned.encode(TEXTS, prompt_name="passage")
  with pytest.raises(ConfigError, match="give one of"):
    tuned.encode(TEXTS, prompt="a", instruction="b")


def test_similarity_is_cosine(model, base):
  sim = model.similarity(base[:2], base)
  ref = np.array([[np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for b in base]
                  for a in base[:2]])
  np.testing.assert_allclose(sim, ref, atol=1e-6)
  assert model.similarity(base[0], base[1]).shape == (1, 1)


def _reference_quantize(x, precision):
  """sentence-transformers' quantize_embeddings, element by element."""
  n, d = x.shape
  if precision in ("binary", "ubinary"):
    out = np.zeros((n, (d + 7) // 8), np.int64)
    for i in range(n):
      for j in range(d):
        if x[i, j] > 0:
          out[i, j // 8] |= 1 << (7 - j % 8)
    return out - 128 if precision == "binary" else out
  out = np.zeros((n, d), np.int64)
  for j in range(d):
    lo, hi = x[:, j].min(), x[:, j].max()
    step = (hi - lo) / 255
    for i in range(n):
      level = int((x[i, j] - lo) / step) if step > 0 else 0
      out[i, j] = level - 128 if precision == "int8" else level
  return out


@pytest.mark.parametrize("precision,dtype", [("int8", np.int8), ("uint8", np.uint8),
                                             ("binary", np.int8), ("ubinary", np.uint8)])
def test_precision_matches_sentence_transformers_quantisation(model, base, precision, dtype):
  q = model.encode(TEXTS, layer=3, dim=64, precision=precision)
  assert q.dtype == dtype
  ref = _reference_quantize(model.encode(TEXTS, layer=3, dim=64), precision)
  # int8 levels may differ by one where float rounding sits on a level boundary.
  assert np.abs(q.astype(np.int64) - ref).max() <= (0 if "binary" in precision else 1)


def test_bad_sentence_transformers_arguments_are_named(model):
  with pytest.raises(ConfigError, match="precision='int4'"):
    model.encode(TEXTS, precision="int4")
  with pytest.raises(ConfigError, match="device='tpu'"):
    model.encode(TEXTS, device="tpu")
  with pytest.raises(ConfigError, match="dim / normalize or sentence-transformers'"):
    model.encode(TEXTS, dim=32, truncate_dim=64)
  # int8 calibrates each coordinate over the vectors encoded together: one text has no
  # range (it used to come back as a constant vector).
  with pytest.raises(ConfigError, match="precision='int8' calibrates .* 1 give no range"):
    model.encode(TEXTS[0], precision="int8")
