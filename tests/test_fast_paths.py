"""The fast paths of the encoders (benchmarks/README.md), each against an independent
reference: attention against float64 NumPy, the hash dropout masks against their
distribution, early exit against the full pass, bfloat16 matmuls against float32."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from conftest import MINILM
from jaxembed.models import layers
from jaxembed.models.bert import BertConfig, BertEncoder
from jaxembed.models.embedder import Embedder


def _reference_attention(q, k, v, mask):
  """float64 loop over heads; k/v heads shared by groups of query heads."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros_like(q)
  for head in range(h):
    kh, vh = k[:, :, head // g], v[:, :, head // g]
    logits = np.einsum("bqd,bkd->bqk", q[:, :, head], kh) / np.sqrt(d)
    logits = np.where(np.broadcast_to(mask[:, 0], logits.shape), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:, :, head] = np.einsum("bqk,bkd->bqd", p, vh)
  return out


@pytest.mark.parametrize("kv_heads,causal", [(4, False), (2, True), (1, False)])
def test_attention_matches_float64_reference(kv_heads, causal):
  rng = np.random.default_rng(0)
  b, t, h, d = 3, 7, 4, 8
  q = rng.standard_normal((b, t, h, d)).astype(np.float32)
  k = rng.standard_normal((b, t, kv_heads, d)).astype(np.float32)
  v = rng.standard_normal((b, t, kv_heads, d)).astype(np.float32)
  lengths = np.array([7, 4, 1])
  keys = np.arange(t)[None, :] < lengths[:, None]
  mask = keys[:, None, None, :] & (np.tril(np.ones((t, t), bool)) if causal else True)
  got = np.asarray(layers.attention(q, k, v, jnp.asarray(mask)))
  want = _reference_attention(q, k, v, np.broadcast_to(mask, (b, 1, t, t)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  got16 = np.asarray(layers.attention(q, k, v, jnp.asarray(mask), dtype="bfloat16"))
  assert got16.dtype == np.float32
  np.testing.assert_allclose(got16, want, rtol=0, atol=3e-2)


def test_attention_dropout_and_gradients_match_float64_reference():
  """Attention dropout drops normalised probabilities (the same keep mask, scaled by
  1 / keep) although the division is deferred past the second matmul; the gradient
  with respect to q, k and v is that of the float64 form (central differences)."""
  rng = np.random.default_rng(1)
  b, t, h, d, rate = 2, 5, 2, 4, 0.3
  q, k, v = (rng.standard_normal((b, t, h, d)) for _ in range(3))
  keys = np.arange(t)[None, :] < np.array([5, 3])[:, None]
  mask = keys[:, None, None, :]
  key = jax.random.PRNGKey(7)
  keep = np.asarray(layers.keep_mask(key, (b, h, t, t), rate))

  def reference(q, k, v):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True) * keep / (1 - rate)
    return np.einsum("bhqk,bkhd->bqhd", p, v)

  def ours(q, k, v):
    return layers.attention(q, k, v, jnp.asarray(mask), dropout_rate=rate, dropout_rng=key)

  f32 = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
  np.testing.assert_allclose(np.asarray(ours(*f32)), reference(q, k, v), rtol=1e-5, atol=1e-5)
  weights = rng.standard_normal((b, t, h, d))
  grads = jax.grad(lambda *a: jnp.sum(ours(*a) * weights), argnums=(0, 1, 2))(*f32)
  eps = 1e-6
  for i, g in enumerate(grads):
    x = [q, k, v]
    numeric = np.zeros_like(x[i])
    for idx in np.ndindex(x[i].shape):
      up = [a.copy() for a in x]
      dn = [a.copy() for a in x]
      up[i][idx] += eps
      dn[i][idx] -= eps
      numeric[idx] = (np.sum(reference(*up) * weights)
                      - np.sum(reference(*dn) * weights)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-3, atol=1e-4)


def test_dropout_masks_have_the_right_distribution_and_vary_with_the_key():
  shape, rate = (64, 128, 96), 0.1
  n = int(np.prod(shape))
  key = jax.random.PRNGKey(3)
  keep = np.asarray(layers.keep_mask(key, shape, rate))
  # Binomial(n, 0.9): 5 standard deviations.
  assert abs(keep.mean() - 0.9) < 5 * np.sqrt(0.09 / n)
  # Same key, same mask; another key, an independent mask (agreement 0.82 = 0.9^2 + 0.1^2).
  assert np.array_equal(keep, np.asarray(layers.keep_mask(key, shape, rate)))
  other = np.asarray(layers.keep_mask(jax.random.fold_in(key, 1), shape, rate))
  assert abs((keep == other).mean() - 0.82) < 5 * np.sqrt(0.82 * 0.18 / n)
  # Neighbouring elements are not correlated (a counter hash that mixes badly would be).
  flat = keep.reshape(-1).astype(np.float64)
  corr = np.corrcoef(flat[:-1], flat[1:])[0, 1]
  assert abs(corr) < 5 / np.sqrt(n)
  # Inverted dropout keeps the mean.
  x = jnp.ones(shape)
  y = np.asarray(layers.dropout(x, rate, key))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.9], rtol=1e-6)
  assert abs(y.mean() - 1.0) < 5 * np.sqrt(0.09 / n) / 0.9


def test_dropout_masks_do_not_depend_on_the_sharding():
  devices = np.array(jax.devices()[:8]).reshape(8)
  mesh = jax.sharding.Mesh(devices, ("data",))
  key = jax.random.PRNGKey(5)
  shape = (16, 32, 24)
  plain = np.asarray(jax.jit(lambda k: layers.keep_mask(k, shape, 0.25))(key))
  sharded = jax.jit(lambda k: layers.keep_mask(k, shape, 0.25),
                    out_shardings=jax.sharding.NamedSharding(
                        mesh, jax.sharding.PartitionSpec("data")))(key)
  assert np.array_equal(plain, np.asarray(sharded))


def _small_model(pooling="mean", dtype="float32"):
  cfg = BertConfig(vocab_size=100, hidden_size=32, num_layers=4, num_heads=4,
                   intermediate_size=64, max_position_embeddings=32, dtype=dtype)
  return Embedder(cfg, pooling=pooling, pool_heads=4)


@pytest.mark.parametrize("pooling", ["mean", "multilayer", "latent"])
def test_early_exit_equals_the_full_pass(pooling):
  model = _small_model(pooling)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1, 100, (5, 12)), jnp.int32)
  mask = jnp.asarray(np.arange(12)[None] < np.array([12, 9, 5, 3, 1])[:, None], jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids, mask)
  full = np.asarray(model.apply(params, ids, mask))                 # [5, 4, 32]
  for depth in range(1, 5):
    sub = model.up_to(depth)
    out = np.asarray(sub.apply(params, ids, mask))
    assert out.shape == (5, depth, 32)
    np.testing.assert_allclose(out, full[:, :depth], rtol=0, atol=1e-6)
    one = model.clone(layers=(depth,), early_exit=True)
    np.testing.assert_allclose(np.asarray(one.apply(params, ids, mask))[:, 0],
                               full[:, depth - 1], rtol=0, atol=1e-6)
  # Early exit computes fewer blocks: the compiled cost shrinks with the depth.
  flops = [jax.jit(lambda p, m=model.up_to(d): m.apply(p, ids, mask)).lower(params)
           .compile().cost_analysis() for d in (1, 4)]
  flops = [(f[0] if isinstance(f, (list, tuple)) else f)["flops"] for f in flops]
  assert flops[0] < 0.5 * flops[1]


def test_encode_layer_equals_the_full_pass_on_minilm():
  import jaxembed
  model = jaxembed.load(MINILM)
  texts = ["a dog runs in the park", "the stock market fell sharply today",
           "photosynthesis converts light into chemical energy", "hello"]
  full = model.encode_all_layers(texts)
  for layer in (1, 2, 6):
    want = full[:, layer - 1, :64]
    want = want / np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(model.encode(texts, layer=layer, dim=64), want,
                               rtol=0, atol=1e-6)


def test_bfloat16_matmuls_stay_close_to_float32():
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(1, 100, (4, 16)), jnp.int32)
  mask = jnp.ones_like(ids)
  m32, m16 = _small_model(), _small_model(dtype="bfloat16")
  params = m32.init(jax.random.PRNGKey(0), ids, mask)
  a = np.asarray(m32.apply(params, ids, mask))
  b = np.asarray(m16.apply(params, ids, mask))
  assert b.dtype == np.float32          # activations and outputs stay float32
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  assert cos.min() > 0.999
  np.testing.assert_allclose(b, a, rtol=0, atol=0.05 * np.abs(a).max())
  # Gradients too.
  def loss(model):
    return lambda p: (model.apply(p, ids, mask) ** 2).mean()
  g32 = jax.jit(jax.grad(loss(m32)))(params)
  g16 = jax.jit(jax.grad(loss(m16)))(params)
  v32 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
  v16 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
  assert np.dot(v32, v16) / np.linalg.norm(v32) / np.linalg.norm(v16) > 0.995


def test_bfloat16_training_follows_float32(smoke_config):
  from jaxembed import sharding as shd, train

  def losses(dtype):
    c = smoke_config(**{"model.bert_overrides.dtype": dtype, "train.dropout": False})
    run = train.setup(c, "/nonexistent-unused")
    _, shardings = train.abstract_state(run)
    state = train.new_state(run, shardings)
    step = train.compile_train_step(run, shardings)
    it = iter(run.dataset)
    out = []
    for _ in range(6):
      state, metrics = step(state, shd.host_batch_to_global(run.mesh, next(it)))
      out.append(float(metrics["loss"]))
    return np.array(out)
  l32, l16 = losses("float32"), losses("bfloat16")
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  assert l32[-1] < l32[0] and l16[-1] < l16[0]


def test_token_lengths_are_what_encode_gives():
  from jaxembed.data.tokenizer import Tokenizer
  import jaxembed
  path = jaxembed.load(MINILM).tokenizer.path
  tok = Tokenizer(path, max_length=12)
  texts = ["hello", "", "1 2 3 4 5 6 7 8 9 10 11 12 13 14", "internationalization",
           "a dog runs in the park"]
  for instruction in ("", "query: "):
    want = [int(tok.encode([t], instruction=instruction)["attention_mask"].sum())
            for t in texts]
    assert list(tok.lengths(texts, instruction, chunk=2)) == want
  assert max(want) == 12                      # truncated like encode


def test_encode_batches_by_token_count(monkeypatch):
  """Batches hold texts of similar token counts (not characters): 'internationalization
  organizations' is long in characters and short in tokens, '1 2 3 ... 9' the reverse.
  Each batch is padded to its own longest text; the vectors are those of one text at a
  time."""
  import jaxembed
  from jaxembed.data.tokenizer import Tokenizer
  model = jaxembed.load(MINILM)
  texts = ["internationalization organizations", "1 2 3 4 5 6 7 8 9 1 2 3 4 5 6 7 8 9",
           "understanding", "x y z w x y z w x y z w x", "transportation authority",
           "a b c d e f g h i j k l m n o p q r s t u", "hello", "7 8 9 10 11 12 13"]
  lengths = model.tokenizer.lengths(texts)
  shapes = []
  encode = Tokenizer.encode

  def spy(self, batch, *args, **kwargs):
    out = encode(self, batch, *args, **kwargs)
    shapes.append((sorted(self.lengths(batch)), out["input_ids"].shape[1]))
    return out
  monkeypatch.setattr(Tokenizer, "encode", spy)
  got = model.encode(texts, batch_size=2)
  monkeypatch.undo()
  # Longest first by tokens: every batch's texts are at least as long as the next's.
  assert [s[0] for s in shapes] == [sorted(lengths)[::-1][i:i + 2][::-1]
                                    for i in range(0, len(texts), 2)]
  assert [s[1] for s in shapes] == [-(-max(s[0]) // 8) * 8 for s in shapes]
  one_by_one = np.concatenate([model.encode([t]) for t in texts])
  np.testing.assert_allclose(got, one_by_one, rtol=0, atol=1e-5)


def test_encoders_of_equal_modules_share_the_compiled_forward_not_the_weights():
  import jaxembed
  from jaxembed import batch_encode as api
  model = jaxembed.load(MINILM)
  texts = ["a dog runs in the park", "the stock market fell sharply today"]
  first = model.encode_all_layers(texts)
  other = jax.tree.map(lambda x: x * 1.01, model.params)
  hits = api._cached_jit_forward.cache_info().hits
  encoder = api.BatchEncoder(model.module, other, model.tokenizer,
                             layers=model.num_layers, width=model.hidden_size)
  second = encoder(texts)
  assert api._cached_jit_forward.cache_info().hits == hits + 1
  enc = model.tokenizer.encode(texts)
  want = np.asarray(model.module.apply({"params": other}, {
      "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
      "pool_mask": enc["attention_mask"]}, method="encode_documents"))
  np.testing.assert_allclose(second, want, rtol=0, atol=1e-5)
  assert np.abs(second - first).max() > 1e-3
  np.testing.assert_array_equal(model.encode_all_layers(texts), first)
