"""Centred exits (model.centered_exits): each layer's pooled vector minus that layer's
mean over a sample of the training texts. The layer means against a slow per-text
loop, the subtraction against the uncentred model, the sample's spread, and the
means staying fixed through training while the "before" grid scores the uncentred
model."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed import sharding as shd, train
from jaxembed.models.bert import BertConfig
from jaxembed.models.embedder import CENTER, Embedder
from jaxembed.train import centring
from jaxembed.train.state import initial_params
from conftest import run_train


def test_each_layer_loses_its_own_row():
  cfg = BertConfig(vocab_size=60, hidden_size=16, num_layers=3, num_heads=2,
                   intermediate_size=32, max_position_embeddings=16)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 60, (4, 7)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, 5:].set(0)
  plain = Embedder(cfg)
  params = plain.init(jax.random.PRNGKey(0), ids, mask)["params"]
  center = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
  centred = Embedder(cfg, centered_exits=True)
  with_center = dict(params, **{CENTER: jnp.asarray(center)})
  want = np.asarray(plain.apply({"params": params}, ids, mask))
  got = np.asarray(centred.apply({"params": with_center}, ids, mask))
  np.testing.assert_allclose(got, want - center[None], rtol=1e-6, atol=1e-6)
  # a subset of layers, and early exit, subtract the rows of their own layers
  sub = np.asarray(centred.clone(layers=(1, 3)).apply({"params": with_center}, ids, mask))
  np.testing.assert_allclose(sub, want[:, [0, 2]] - center[[0, 2]][None], rtol=1e-6,
                             atol=1e-6)
  early = np.asarray(centred.up_to(2).apply({"params": with_center}, ids, mask))
  np.testing.assert_allclose(early, want[:, :2] - center[:2][None], rtol=1e-6, atol=1e-6)


def test_the_sample_spreads_over_each_source_by_weight():
  a = [f"a{i}" for i in range(100)]
  b = [f"b{i}" for i in range(1000)]
  got = centring.centring_sample([a, b], [1.0, 3.0], 40)
  assert got[:10] == [a[i] for i in np.linspace(0, 99, 10).round().astype(int)]
  assert got[10:] == [b[i] for i in np.linspace(0, 999, 30).round().astype(int)]
  assert centring.centring_sample([a[:3]], [1.0], 50) == a[:3]   # all of a small source


def _centred_run(smoke_config, **overrides):
  config = smoke_config(**{"model.centered_exits": True, "model.centering_texts": 64,
                           "train.dropout": False, **overrides})
  config.loss.distill.update(weight=1.0, anchor_weight=1.0)   # allowed with a teacher
  return train.setup(config, "/nonexistent-unused", devices=jax.devices()[:2])


def test_layer_means_against_a_per_text_loop(smoke_config):
  run = _centred_run(smoke_config)
  assert len(run.centering_texts) == 64
  _, shardings = train.abstract_state(run)
  params = initial_params(run)
  got = centring.layer_means(run, params, list(run.centering_texts))
  host = jax.tree.map(np.asarray, shd.local_value(params))
  host[CENTER] = np.zeros_like(host[CENTER])
  rows = []
  for text in run.centering_texts:      # one text at a time, no batching or sorting
    enc = run.tokenizer.encode([text])
    rows.append(np.asarray(run.model.apply({"params": host}, enc["input_ids"],
                                           enc["attention_mask"]))[0])
  want = np.mean(np.float64(rows), axis=0)
  assert got.shape == (2, 32)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got[1], 0.0)      # the last layer is not centred
  assert np.linalg.norm(got[0]) > 0.1


def test_the_means_stay_fixed_through_training(smoke_config):
  run = _centred_run(smoke_config)
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  start = jax.tree.map(np.asarray, shd.local_value(state.params))
  np.testing.assert_allclose(
      start[CENTER], centring.layer_means(run, initial_params(run),
                                          list(run.centering_texts)), rtol=1e-6)
  step_fn = train.compile_train_step(run, shardings)
  it = iter(run.dataset)
  for _ in range(3):
    state, _ = step_fn(state, shd.host_batch_to_global(run.mesh, next(it)))
  end = jax.tree.map(np.asarray, shd.local_value(state.params))
  np.testing.assert_array_equal(end[CENTER], start[CENTER])
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), end["encoder"],
                       start["encoder"])
  assert max(jax.tree.leaves(moved)) > 1e-5
  # Merging's θ0 ('pretrained') is the start as training sees it, means included.
  from jaxembed.train import merge
  theta0 = jax.tree.map(np.asarray, shd.local_value(merge.load_params(run, "pretrained")))
  np.testing.assert_allclose(theta0[CENTER], start[CENTER], rtol=1e-6)


def test_before_scores_the_uncentred_model(tmp_path, tfds_dir):
  """Two runs from the same initial weights, one centred: their "before" grids are
  equal (the model the run starts from), their "after" grids are not; the saved
  model loads centred."""
  common = ["--config=configs/minilm_wordnet_2d.py:smoke", f"--config.data.tfds_dir={tfds_dir}",
            "--config.train.steps=2", "--config.train.checkpoint_every=2"]
  grids = {}
  for centred in (False, True):
    workdir = tmp_path / f"centred_{centred}"
    done = run_train(common + [f"--workdir={workdir}",
                               f"--config.model.centered_exits={centred}"])
    assert done.returncode == 0, done.stderr[-3000:]
    grids[centred] = json.loads((workdir / "metrics.json").read_text())
  assert grids[True]["before"] == grids[False]["before"]
  assert grids[True]["after"] != grids[False]["after"]
  import jaxembed
  model = jaxembed.load(str(tmp_path / "centred_True"))
  assert model.spec.centered_exits and np.abs(np.asarray(model.params[CENTER][0])).max() > 0
