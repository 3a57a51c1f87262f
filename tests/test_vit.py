"""The ViT encoder against Hugging Face's ViTModel on the same random weights
(fixture: tests/fixtures/make_vit_reference.py)."""

import json
import os

import numpy as np

from jaxembed.models.vit import ViTConfig, ViTEncoder, vit_hf_to_flax

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "vit_reference.npz")


def ln(x, w, b, eps=1e-12):
  x = x.astype(np.float64)
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def test_vit_matches_transformers():
  f = np.load(FIXTURE)
  cfg = ViTConfig.from_hf(json.loads(bytes(f["config"]).decode()))
  params = vit_hf_to_flax({k[8:]: f[k] for k in f.files if k.startswith("weights/")}, cfg)
  hidden, mask = ViTEncoder(cfg).apply({"params": params["encoder"]}, f["pixels"])
  assert mask.shape == (3, 17)
  ref = f["hidden_states"]
  norm = params["encoder"]["final_norm"]
  for i in range(cfg.num_layers + 1):
    want = ref[i] if i in (0, cfg.num_layers) else ln(ref[i], norm["scale"], norm["bias"])
    if i == cfg.num_layers:
      want = f["last_hidden_state"]
    got = np.asarray(hidden[i])
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 1e-4, (i, rel)
