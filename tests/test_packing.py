"""Sequence packing (data.pack_length): the packed rows hold every text's tokens at its
own positions, each text attends only to itself, and the model's vectors, gradients
and training losses are those of the padded batch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed import train
from jaxembed.data import packing
from jaxembed.data.pipeline import TokenizePairs
from jaxembed.errors import ConfigError
from jaxembed.models import Embedder
from jaxembed.models.bert import BertConfig
from test_sharding import train_steps

BERT = BertConfig(vocab_size=97, hidden_size=32, num_layers=3, num_heads=4,
                  intermediate_size=64, max_position_embeddings=64)


def padded(rng, n, t, low=1):
  lengths = rng.integers(low, t + 1, size=n)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  return {"input_ids": (rng.integers(1, 97, size=(n, t)) * mask).astype(np.int32),
          "attention_mask": mask}


@pytest.mark.parametrize("row_length,granule", [(16, 1), (24, 4), (40, 8)])
def test_packed_rows_hold_each_text_once_at_its_positions(row_length, granule):
  rng = np.random.default_rng(row_length)
  sides = [padded(rng, 9, 16), padded(rng, 5, 16, low=0)]      # an empty text too
  packed, index = packing.pack_rows([s["attention_mask"] for s in sides],
                                    [s["input_ids"] for s in sides], row_length, granule)
  rows = packed["input_ids"].shape[0]
  assert packed["input_ids"].shape == (rows, row_length) and rows % granule == 0
  flat = {k: v.reshape(-1) for k, v in packed.items()}
  used = np.zeros(rows * row_length, int)
  for side, idx in zip(sides, index):
    assert idx.shape == side["input_ids"].shape
    for t in range(len(idx)):
      cols = np.flatnonzero(side["attention_mask"][t])
      slots = idx[t, cols]
      np.testing.assert_array_equal(flat["input_ids"][slots], side["input_ids"][t, cols])
      np.testing.assert_array_equal(flat["position_ids"][slots], cols)
      if len(cols):
        # one text: consecutive slots of one row, one segment id of its own
        assert len({s // row_length for s in slots}) == 1
        np.testing.assert_array_equal(np.diff(slots), 1)
        assert len(set(flat["segment_ids"][slots])) == 1 and flat["segment_ids"][slots[0]] > 0
      assert (idx[t, side["attention_mask"][t] == 0] == 0).all()
      used[slots] += 1
  assert used.max() <= 1                           # no slot holds two tokens
  np.testing.assert_array_equal(used > 0, flat["segment_ids"] > 0)
  # segments are distinct within a row: no two texts share (row, segment)
  keys = {(s // row_length, flat["segment_ids"][s]) for s in np.flatnonzero(used)}
  assert len(keys) == sum(int((s["attention_mask"].sum(1) > 0).sum()) for s in sides)
  # the row count is the rows in use rounded up to the granule, and no row is left empty
  # before the last used one
  tokens = sum(int(s["attention_mask"].sum()) for s in sides)
  needed = -(-len(np.unique(np.flatnonzero(used) // row_length)) // granule) * granule
  assert rows == max(granule, needed) and needed * row_length >= tokens
  in_use = np.unique(np.flatnonzero(used) // row_length)
  np.testing.assert_array_equal(in_use, np.arange(len(in_use)))


def test_a_text_longer_than_the_row_is_refused():
  mask = np.ones((2, 12), np.int32)
  with pytest.raises(ValueError, match="12 tokens does not fit rows of 8"):
    packing.pack_rows([mask], [mask], 8)


def init(model):
  ids = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(model.init(jax.random.PRNGKey(0), ids, ids))["params"]


def packed_batch(batch, row_length, granule=4):
  sides = [s for s in ("anchor", "positive", "negatives") if s in batch]
  flat = lambda a: a.reshape(-1, a.shape[-1])
  rows, index = packing.pack_rows([flat(batch[s]["attention_mask"]) for s in sides],
                                  [flat(batch[s]["input_ids"]) for s in sides],
                                  row_length, granule)
  out = {s: dict(batch[s], token_index=i.reshape(batch[s]["input_ids"].shape))
         for s, i in zip(sides, index)}
  return dict(out, packed=rows)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
def test_packed_vectors_and_gradients_equal_the_padded_ones(pooling):
  """Against the padded batch through the same model: anchors with instruction tokens
  (attended, not pooled), positives and two hard negatives per pair, every layer."""
  rng = np.random.default_rng(1)
  model = Embedder(BERT, pooling=pooling)
  params = init(model)
  anchor = padded(rng, 6, 16, low=3)
  anchor["pool_mask"] = anchor["attention_mask"].copy()
  anchor["pool_mask"][:, :2] = 0                   # a 2-token instruction
  negatives = padded(rng, 12, 16)
  batch = {"anchor": anchor, "positive": padded(rng, 6, 16),
           "negatives": {k: v.reshape(6, 2, 16) for k, v in negatives.items()}}
  pbatch = packed_batch(batch, 32)
  assert pbatch["packed"]["input_ids"].size < 24 * 16      # fewer slots than padded

  @jax.jit    # one compile per layout: op by op, this test took a minute
  def vectors(p, b):
    return model.apply({"params": p}, b, method="encode_pairs")

  ref, got = vectors(params, batch), vectors(params, pbatch)
  for r, g in zip(ref, got):
    assert r.shape == g.shape
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)

  def loss(p, b):
    a, q, n = vectors(p, b)
    return jnp.sum(a * q) + jnp.sum(jnp.tanh(n))

  grad = jax.jit(jax.grad(loss))
  g_ref, g_got = grad(params, batch), grad(params, pbatch)
  for (path, r), g in zip(jax.tree_util.tree_leaves_with_path(g_ref), jax.tree.leaves(g_got)):
    scale = float(np.abs(r).max())
    assert float(np.abs(np.asarray(g) - r).max()) <= 1e-5 * max(scale, 1.0), path
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g_ref)) > 1e-2


def test_the_pipeline_packs_what_it_pads(smoke_config):
  """TokenizePairs with pack_length: the padded arrays are unchanged and the packed rows
  give back each side's tokens through token_index."""
  run = train.setup(smoke_config(), "/nonexistent-unused", devices=jax.devices()[:1])
  texts = {"anchor": ["a dog", "the cat sat on the mat", "x"],
           "positive": ["a domestic animal kept as a pet", "feline", "the letter x and y"]}
  plain = TokenizePairs(run.tokenizer, 12)(texts)
  packed = TokenizePairs(run.tokenizer, 12, pack_length=16, pack_granule=2)(texts)
  rows = packed["packed"]["input_ids"].reshape(-1)
  for side in ("anchor", "positive"):
    for key in ("input_ids", "attention_mask"):
      np.testing.assert_array_equal(packed[side][key], plain[side][key])
    m = plain[side]["attention_mask"].astype(bool)
    np.testing.assert_array_equal(rows[packed[side]["token_index"]][m], plain[side]["input_ids"][m])
  assert packed["packed"]["input_ids"].shape[0] % 2 == 0


def train_losses(config):
  """Every loss metric of 3 steps on 2 devices, and the last batch."""
  _, _, steps = train_steps(config, jax.devices()[:2])
  return [{k: v for k, v in m.items() if k != "finite"} for m, _ in steps], steps[-1][1]


def test_packed_training_follows_padded_training(smoke_config):
  """The distillation recipe (pair loss, teacher terms, centred exits, a two-dataset
  mixture), dropout off, on 2 devices: the same batches packed and padded give the
  same losses step after step."""
  arg = "smoke,arm=distill_centred"
  ref, _ = train_losses(smoke_config(arg, **{"train.dropout": False}))
  got, batch = train_losses(smoke_config(arg, **{"train.dropout": False,
                                                  "data.pack_length": 32,
                                                  "data.pack_granule": 2}))
  assert "packed" in batch
  assert batch["packed"]["input_ids"].size < 2 * batch["anchor"]["input_ids"].size
  for r, g in zip(ref, got):
    assert r.keys() == g.keys()
    for k in r:
      np.testing.assert_allclose(g[k], r[k], rtol=2e-4, atol=1e-5, err_msg=k)
  assert ref[0]["loss"] != ref[-1]["loss"]


@pytest.mark.parametrize("overrides,match", [
    ({"data.pack_length": 8}, "at least data.seq_len"),
    ({"data.pack_length": 32, "data.pack_granule": 0}, "pack_granule=0"),
    ({"data.pack_length": 32, "data.padding_side": "left"}, "padding_side='left'"),
    ({"data.pack_length": 32, "train.grad_cache_minibatch": 4}, "grad_cache_minibatch"),
    ({"data.pack_length": -1}, "pack_length=-1"),
])
def test_bad_packing_settings_are_named(smoke_config, overrides, match):
  with pytest.raises(ConfigError, match=match):
    train.setup(smoke_config(**overrides), "/nonexistent-unused", devices=jax.devices()[:1])


def test_a_decoder_cannot_pack(smoke_config):
  from configs import smollm2_pooling
  config = smollm2_pooling.get_config("smoke")
  config.data.tfds_dir = smoke_config().data.tfds_dir
  config.data.pack_length = 64
  with pytest.raises(ConfigError, match="BERT encoders only"):
    train.setup(config, "/nonexistent-unused", devices=jax.devices()[:1])
