"""Pooling against NumPy, and the weight loader's errors and round trip."""

import numpy as np
import pytest

from jaxembed.errors import ModelLoadError
from jaxembed.models import pooling
from jaxembed.models.bert import BertConfig
from jaxembed.models.hf import bert_hf_to_flax as hf_to_flax, flax_to_hf


def np_pool(kind, h, m):
  out = np.zeros((h.shape[0], h.shape[2]))
  for b in range(h.shape[0]):
    idx = [t for t in range(h.shape[1]) if m[b, t]]
    if kind == "cls":
      out[b] = h[b, 0]
    elif not idx:
      out[b] = h[b, 0] if kind == "last_token" else 0.0
    elif kind == "mean":
      out[b] = h[b, idx].mean(0)
    elif kind == "weighted_mean":
      w = np.arange(1, len(idx) + 1, dtype=np.float64)
      out[b] = (h[b, idx] * w[:, None]).sum(0) / w.sum()
    elif kind == "max":
      out[b] = h[b, idx].max(0)
    elif kind == "last_token":
      out[b] = h[b, idx[-1]]
  return out


@pytest.mark.parametrize("kind", sorted(pooling.FUNCTIONS))
def test_pooling_matches_numpy_with_left_and_right_padding(kind):
  rng = np.random.default_rng(0)
  h = rng.normal(size=(5, 7, 4)).astype(np.float32)
  m = np.array([[1, 1, 1, 0, 0, 0, 0],    # right padding
                [0, 0, 0, 1, 1, 1, 1],    # left padding
                [1, 1, 1, 1, 1, 1, 1],    # none
                [0, 0, 0, 0, 0, 0, 0],    # all padding: defined, finite output
                [0, 0, 1, 0, 0, 0, 0]], np.int32)
  got = np.asarray(pooling.FUNCTIONS[kind](h, m))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, np_pool(kind, h, m), rtol=1e-6, atol=1e-6)


def tiny():
  return BertConfig(vocab_size=11, hidden_size=8, num_layers=2, num_heads=2,
                    intermediate_size=12, max_position_embeddings=16)


def hf_tensors(cfg, rng):
  """Random tensors with HF BERT names and shapes (torch Linear is [out, in])."""
  h, f = cfg.hidden_size, cfg.intermediate_size
  t = {"bert.embeddings.word_embeddings.weight": (cfg.vocab_size, h),
       "bert.embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
       "bert.embeddings.token_type_embeddings.weight": (2, h),
       "bert.embeddings.LayerNorm.weight": (h,), "bert.embeddings.LayerNorm.bias": (h,),
       "bert.pooler.dense.weight": (h, h)}
  for i in range(cfg.num_layers):
    p = f"bert.encoder.layer.{i}."
    for n in ("query", "key", "value"):
      t[f"{p}attention.self.{n}.weight"] = (h, h)
      t[f"{p}attention.self.{n}.bias"] = (h,)
    t.update({f"{p}attention.output.dense.weight": (h, h),
              f"{p}attention.output.dense.bias": (h,),
              f"{p}attention.output.LayerNorm.weight": (h,),
              f"{p}attention.output.LayerNorm.bias": (h,),
              f"{p}intermediate.dense.weight": (f, h), f"{p}intermediate.dense.bias": (f,),
              f"{p}output.dense.weight": (h, f), f"{p}output.dense.bias": (h,),
              f"{p}output.LayerNorm.weight": (h,), f"{p}output.LayerNorm.bias": (h,)})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in t.items()}


def test_round_trip_and_prefix():
  cfg = tiny()
  tensors = hf_tensors(cfg, np.random.default_rng(0))
  params = hf_to_flax(tensors, cfg)
  # query weight [out, in] -> kernel [in, heads, head_dim]
  q = tensors["bert.encoder.layer.1.attention.self.query.weight"]
  np.testing.assert_array_equal(params["encoder"]["layer_1"]["attention"]["query"]["kernel"],
                                q.T.reshape(8, 2, 4))
  back = flax_to_hf(params, cfg)
  for name, value in back.items():
    np.testing.assert_array_equal(value, tensors["bert." + name])


def test_missing_tensor_is_named():
  cfg = tiny()
  tensors = hf_tensors(cfg, np.random.default_rng(0))
  del tensors["bert.encoder.layer.1.output.dense.bias"]
  with pytest.raises(ModelLoadError, match=r"missing.*encoder\.layer\.1\.output\.dense\.bias"):
    hf_to_flax(tensors, cfg, source="model.safetensors")


def test_misshaped_tensor_is_named():
  cfg = tiny()
  tensors = hf_tensors(cfg, np.random.default_rng(0))
  tensors["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((13, 8), np.float32)
  with pytest.raises(ModelLoadError,
                     match=r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(13, 8\)"):
    hf_to_flax(tensors, cfg)


def test_bert_scan_and_remat_match_the_unrolled_model():
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from jaxembed.models.bert import BertEncoder
  from jaxembed.models.weights import scan_layout, unscan_layout
  cfg = BertConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2,
                   intermediate_size=24, max_position_embeddings=16, hidden_dropout=0.0,
                   attention_dropout=0.0)
  ids = np.array([[3, 4, 5, 0], [6, 7, 8, 9]])
  mask = (ids > 0).astype(np.int32)
  params = nn.unbox(BertEncoder(cfg).init(jax.random.PRNGKey(0), ids, mask))["params"]
  scanned_cfg = BertConfig(**{**cfg.__dict__, "scan_layers": True, "remat": True})
  stacked = scan_layout({"encoder": params}, 3)["encoder"]
  a = BertEncoder(cfg).apply({"params": params}, ids, mask)
  b = BertEncoder(scanned_cfg).apply({"params": stacked}, ids, mask)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  back = unscan_layout({"encoder": stacked}, 3)["encoder"]
  np.testing.assert_array_equal(back["layer_2"]["output"]["kernel"],
                                params["layer_2"]["output"]["kernel"])
  loss = lambda p, c: sum(jnp.sum(h ** 2) for h in BertEncoder(c).apply({"params": p}, ids, mask))
  g1 = jax.jit(jax.grad(lambda p: loss(p, cfg)))(params)
  g2 = jax.jit(jax.grad(lambda p: loss(p, scanned_cfg)))(stacked)
  np.testing.assert_allclose(g2["layers"]["block"]["intermediate"]["kernel"][1],
                             g1["layer_1"]["intermediate"]["kernel"], rtol=1e-4, atol=1e-6)
