"""The decoder-LLM encoder against Hugging Face Llama and Qwen2 (fixture made by
tests/fixtures/make_decoder_reference.py), causal and bidirectional, left and right
padding; scan and remat give the same numbers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.errors import ConfigError
from jaxembed.models.decoder import DecoderConfig, DecoderEncoder
from jaxembed.models.embedder import Embedder
from jaxembed.models.hf import decoder_hf_to_flax
from jaxembed.models.weights import scan_layout

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "decoder_reference.npz")


def load(name, **overrides):
  f = np.load(FIXTURE)
  hf = json.loads(bytes(f[f"{name}/config"]).decode())
  cfg = DecoderConfig.from_hf(hf, **overrides)
  prefix = f"{name}/weights/"
  params = decoder_hf_to_flax({k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)},
                              cfg)
  return f, cfg, params


def rms(x, w, eps=1e-6):
  x = x.astype(np.float64)
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_hidden_states_match_transformers(name, mode):
  f, cfg, params = load(name, attention=mode)
  assert cfg.qkv_bias == (name == "qwen2") and cfg.num_kv_heads == 2
  ids, mask = f["ids"], f["mask"]
  hidden = DecoderEncoder(cfg).apply({"params": params["encoder"]}, ids, mask)
  ref = f[f"{name}/{mode}/hidden_states"]
  real = mask.astype(bool)        # padded positions are not compared
  norm_w = params["encoder"]["final_norm"]["scale"]
  for i in range(cfg.num_layers + 1):
    want = ref[i] if i in (0, cfg.num_layers) else rms(ref[i], norm_w)
    got = np.asarray(hidden[i])
    err = np.abs(got - want)[real].max() / np.abs(want)[real].max()
    assert err <= 1e-4, (i, err)
  np.testing.assert_allclose(np.asarray(hidden[-1])[real],
                             f[f"{name}/{mode}/last_hidden_state"][real], rtol=1e-4, atol=1e-5)


def test_left_and_right_padding_give_the_same_states():
  _, cfg, params = load("llama", attention="causal")
  ids = np.array([[5, 6, 7, 8, 0, 0], [0, 0, 5, 6, 7, 8]])
  mask = (np.arange(6)[None] >= np.array([[0], [2]])) & (np.arange(6)[None] < np.array([[4], [6]]))
  mask = mask.astype(np.int32)
  for pooling in ("last_token", "mean", "weighted_mean"):
    model = Embedder(cfg, pooling=pooling)
    out = np.asarray(model.apply({"params": params}, ids, mask))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_scan_and_remat_match_the_unrolled_model():
  _, cfg, params = load("qwen2", attention="bidirectional")
  f = np.load(FIXTURE)
  ids, mask = f["ids"], f["mask"]
  base = DecoderEncoder(cfg).apply({"params": params["encoder"]}, ids, mask)
  scanned_cfg = DecoderConfig(**{**cfg.__dict__, "scan_layers": True, "remat": True})
  scanned = DecoderEncoder(scanned_cfg).apply(
      {"params": scan_layout(params, cfg.num_layers)["encoder"]}, ids, mask)
  for a, b in zip(base, scanned):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  # Gradients agree too (remat recomputes the forward pass inside the backward one).
  def loss(p, model):
    return sum(jnp.sum(h ** 2) for h in model.apply({"params": p}, ids, mask))
  g1 = jax.jit(jax.grad(lambda p: loss(p, DecoderEncoder(cfg))))(params["encoder"])
  g2 = jax.jit(jax.grad(lambda p: loss(p, DecoderEncoder(scanned_cfg))))(
      scan_layout(params, cfg.num_layers)["encoder"])
  np.testing.assert_allclose(g2["layers"]["block"]["gate"]["kernel"][1],
                             g1["layer_1"]["gate"]["kernel"], rtol=1e-4, atol=2e-5)


def test_bad_decoder_settings_are_named():
  with pytest.raises(ConfigError, match=r"model.decoder.attention='sideways'; valid values: "
                                        r"\['causal', 'bidirectional'\]"):
    DecoderConfig(attention="sideways")
  with pytest.raises(ConfigError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
    DecoderConfig(hidden_size=48, num_heads=6, num_kv_heads=4)
