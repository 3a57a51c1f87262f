"""Every encoder and pooling choice, selected by config, runs a sharded train step on 8
CPU devices (data 2 x fsdp 2 x tensor 2); wrong choices fail at config time naming the
valid values."""

import jax
import numpy as np
import pytest

from jaxembed.errors import ConfigError
from jaxembed.models.pooling import POOLERS
from jaxembed import sharding as shd, train

DECODER = {"model.encoder": "decoder", "model.decoder.hidden_size": 32,
           "model.decoder.num_layers": 2, "model.decoder.num_heads": 4,
           "model.decoder.num_kv_heads": 2, "model.decoder.intermediate_size": 48}


def steps(config, n=2):
  config.mesh.update(data=2, fsdp=2, tensor=2)
  run = train.setup(config, "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  before = jax.tree.map(np.asarray, shd.local_value(state.params))
  step_fn = train.compile_train_step(run, shardings)
  data = iter(run.dataset)
  losses = []
  for _ in range(n):
    batch = next(data)
    state, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
    losses.append(float(shd.local_value(metrics)["loss"]))
  return run, state, before, losses, batch


def changed(before, after):
  return any(not np.allclose(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(before), jax.tree.leaves(shd.local_value(after))))


@pytest.mark.parametrize("pooling", sorted(POOLERS))
def test_every_pooling_trains_sharded(smoke_config, pooling):
  config = smoke_config(**{"model.pooling": pooling, "model.pool_heads": 2,
                           "model.pool_latents": 4, "train.steps": 2})
  run, state, before, losses, _ = steps(config)
  assert np.isfinite(losses).all()
  assert changed(before["encoder"], state.params["encoder"])
  if pooling in ("map", "latent", "multilayer"):
    assert changed(before["pooler"], state.params["pooler"])   # the head is trained


@pytest.mark.parametrize("case", [
    dict(**{"model.decoder.attention": "causal", "model.pooling": "last_token",
            "data.padding_side": "left"}),
    dict(**{"model.decoder.attention": "bidirectional", "model.pooling": "latent",
            "model.pool_heads": 2, "model.pool_latents": 4}),
    dict(**{"model.decoder.attention": "bidirectional", "model.pooling": "mean",
            "model.decoder.scan_layers": True, "model.decoder.remat": True}),
    dict(**{"model.decoder.attention": "causal", "model.pooling": "weighted_mean",
            "data.query_instruction": "Retrieve the definition: "}),
], ids=["causal-last-left", "bidir-latent", "bidir-mean-scan-remat", "causal-wmean-instr"])
def test_decoder_variants_train_sharded(smoke_config, case):
  config = smoke_config(**{**DECODER, **case, "train.steps": 2})
  run, state, before, losses, batch = steps(config)
  assert np.isfinite(losses).all()
  assert changed(before["encoder"], state.params["encoder"])
  enc = state.params["encoder"]
  kernel = (enc["layers"]["block"]["gate"]["kernel"] if case.get("model.decoder.scan_layers")
            else enc["layer_0"]["gate"]["kernel"])
  assert kernel.addressable_shards[0].data.shape[-1] == 48 // 2   # mlp over tensor
  if case.get("data.padding_side") == "left":
    assert (batch["anchor"]["attention_mask"][:, -1] == 1).all()
  if case.get("data.query_instruction"):
    a = batch["anchor"]
    assert (a["pool_mask"].sum(1) < a["attention_mask"].sum(1)).all()


@pytest.mark.parametrize("overrides, match", [
    ({"model.pooling": "avg"}, r"model.pooling='avg' is not a pooling; valid values: \['cls',"),
    ({"model.encoder": "t5"}, r"model.encoder='t5'; valid values: \['bert', 'decoder', 'two_tower'\]"),
    ({**DECODER, "model.decoder.attention": "sideways"},
     r"model.decoder.attention='sideways'; valid values: \['causal', 'bidirectional'\]"),
    ({"eval.dims": (8, 64)}, r"eval.dims: dim 64 is out of range .* \(valid: 1\.\.32\)"),
    ({"eval.layers": (1, 3)}, r"eval.layers: layer 3 is not in the model; valid layers: 1\.\.2"),
    ({"loss.matryoshka.layers": (0, 2)}, r"loss.matryoshka.layers: layer 0 .* 1\.\.2"),
    ({"model.pooling": "map", "model.pool_heads": 3}, r"model.pool_heads=3 must divide"),
    ({"data.padding_side": "middle"}, r"data.padding_side='middle'; valid values"),
])
def test_wrong_model_choices_fail_at_config_time(smoke_config, overrides, match):
  with pytest.raises(ConfigError, match=match):
    train.setup(smoke_config(**overrides), "/nonexistent-unused")


@pytest.mark.parametrize("arg", ["smoke", "smoke,loss=siglip,pooling=map"])
def test_image_text_two_tower_trains_sharded(tfds_dir, arg):
  from configs import clip_fashion_mnist
  config = clip_fashion_mnist.get_config(arg)
  config.data.tfds_dir = tfds_dir
  config.train.steps = 2
  run, state, before, losses, batch = steps(config)
  assert np.isfinite(losses).all()
  assert batch["anchor"]["pixels"].shape == (8, 28, 28, 1)
  assert len(set(map(tuple, batch["positive"]["input_ids"]))) == 8   # no caption twice
  assert changed(before["anchor_tower"], state.params["anchor_tower"])
  assert changed(before["loss"], state.params["loss"])      # learnable temperature (+bias)
  rows = train.evaluate(run, state.params, "test")
  assert [r["dim"] for r in rows] == [8, 16, 32]
  assert all(0.0 <= r["fashion_mnist/zero_shot_acc"] <= 1.0 for r in rows)


@pytest.mark.parametrize("arg", ["smoke,positives=class,batch=16",
                                 "smoke,loss=siglip,positives=class,batch=16"])
def test_image_text_batches_with_repeated_classes(tfds_dir, arg):
  """positives=class: batches larger than the 10 classes, each carrying its labels as
  groups, trained by the objectives that read them (the losses' values are tested
  against loops in test_loss_family)."""
  from configs import clip_fashion_mnist
  config = clip_fashion_mnist.get_config(arg)
  config.data.tfds_dir = tfds_dir
  config.train.steps = 2
  assert not config.data.distinct_classes
  run, state, before, losses, batch = steps(config)
  assert np.isfinite(losses).all()
  assert batch["anchor"]["pixels"].shape == (16, 28, 28, 1)
  groups = np.asarray(batch["group"])
  assert groups.shape == (16,) and len(set(groups.tolist())) < 16     # classes repeat
  assert changed(before["anchor_tower"], state.params["anchor_tower"])


def test_repeated_classes_need_an_objective_that_reads_them(tfds_dir):
  from configs import clip_fashion_mnist
  config = clip_fashion_mnist.get_config("smoke,positives=class,batch=16")
  config.loss.name = "info_nce"
  with pytest.raises(ConfigError, match=r"data.distinct_classes=False .* "
                                        r"\['sigmoid', 'multi_positive_info_nce'\]"):
    train.setup(config, "/nonexistent-unused")
  config = clip_fashion_mnist.get_config("smoke,batch=16")
  config.data.tfds_dir = tfds_dir
  with pytest.raises(Exception, match=r"batch_size=16: .* at most 10, or "
                                      r"data.distinct_classes=False"):
    steps(config)


@pytest.mark.parametrize("shared", [False, True])
def test_text_text_two_tower_trains_sharded(smoke_config, shared):
  config = smoke_config(**{"model.encoder": "two_tower", "model.two_tower.towers": "text_text",
                           "model.two_tower.shared": shared, "model.two_tower.embed_dim": 32,
                           "loss.matryoshka.layers": (1,), "eval.layers": (1,),
                           "train.steps": 2})
  run, state, before, losses, _ = steps(config)
  assert np.isfinite(losses).all()
  assert ("anchor_tower" in state.params) == (not shared)
  rows = train.evaluate(run, state.params, "test")
  assert len(rows) == 3 and "wordnet/ndcg_at_10" in rows[0]


def test_bert_scan_remat_trains_sharded(smoke_config):
  config = smoke_config(**{"model.bert_overrides.scan_layers": True,
                           "model.bert_overrides.remat": True, "train.steps": 2})
  run, state, before, losses, _ = steps(config)
  assert np.isfinite(losses).all()
  kernel = state.params["encoder"]["layers"]["block"]["intermediate"]["kernel"]
  assert kernel.shape == (2, 32, 64)
  assert kernel.addressable_shards[0].data.shape == (2, 32 // 2, 64 // 2)  # fsdp, tensor


def test_trainable_pooler_on_a_pretrained_encoder(smoke_config):
  """Pretrained MiniLM weights plus a freshly initialised latent-attention head."""
  from jaxembed.models import load_bert_safetensors, read_model_folder
  config = smoke_config(**{"model.init": "pretrained", "model.pooling": "latent",
                           "model.pool_heads": 4, "model.pool_latents": 8,
                           "loss.matryoshka.layers": (6,), "loss.matryoshka.dims": (384,),
                           "eval.layers": (6,), "eval.dims": (384,), "train.steps": 2})
  config.model.bert_overrides = {}
  run = train.setup(config, "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  folder = read_model_folder(config.model.path)
  want = load_bert_safetensors(folder.weights, folder.encoder_config)["encoder"]
  got = shd.local_value(state.params["encoder"])
  np.testing.assert_array_equal(got["layer_3"]["intermediate"]["kernel"],
                                want["layer_3"]["intermediate"]["kernel"])
  assert state.params["pooler"]["latent"]["latents"].shape == (8, 384)
