"""Centred exits (model.centred_exits): each layer's pooled vector minus that layer's
mean over a sample of the training texts, and with model.exit_components its top
principal directions projected out. The layer means and directions against a slow
per-text loop (the directions from the covariance's eigenvectors), the subtraction
and projection against NumPy on the uncentred model, the sample's spread, and the
statistics staying fixed through training while the "before" grid scores the
uncentred model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed import sharding as shd, train
from jaxembed.models.bert import BertConfig
from jaxembed.errors import ConfigError
from jaxembed.models.build import check_model_config
from jaxembed.models.embedder import CENTER, COMPONENTS, Embedder
from jaxembed.train import centring
from jaxembed.train.state import initial_params
from conftest import run_train


def _tiny():
  """A 3-layer, 16-wide random BERT embedder, its parameters and a padded batch."""
  cfg = BertConfig(vocab_size=60, hidden_size=16, num_layers=3, num_heads=2,
                   intermediate_size=32, max_position_embeddings=16)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 60, (4, 7)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, 5:].set(0)
  plain = Embedder(cfg)
  return cfg, plain, plain.init(jax.random.PRNGKey(0), ids, mask)["params"], ids, mask


def test_each_layer_loses_its_own_row():
  cfg, plain, params, ids, mask = _tiny()
  center = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
  centred = Embedder(cfg, centred_exits=True)
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


def test_components_are_projected_out():
  cfg, plain, params, ids, mask = _tiny()
  rng = np.random.default_rng(1)
  center = rng.normal(size=(3, 16))
  u = np.zeros((3, 2, 16))
  for layer in range(2):                 # the last layer's rows stay zero
    u[layer] = np.linalg.qr(rng.normal(size=(16, 2)))[0].T
  model = Embedder(cfg, centred_exits=True, exit_components=2)
  full = dict(params, **{CENTER: jnp.asarray(center, jnp.float32),
                         COMPONENTS: jnp.asarray(u, jnp.float32)})
  v = np.asarray(plain.apply({"params": params}, ids, mask), np.float64)
  want = np.empty_like(v)
  for layer in range(3):                 # P (v - mean), P = I - U^T U, one layer at a time
    p = np.eye(16) - u[layer].T @ u[layer]
    want[:, layer] = (v[:, layer] - center[layer]) @ p.T
  got = np.asarray(model.apply({"params": full}, ids, mask))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, 2], v[:, 2] - center[2], rtol=1e-5, atol=1e-5)
  sub = np.asarray(model.clone(layers=(1, 3)).apply({"params": full}, ids, mask))
  np.testing.assert_allclose(sub, want[:, [0, 2]], rtol=1e-5, atol=1e-5)
  # projected vectors have no component along the removed directions
  assert np.abs(np.einsum("bw,kw->bk", got[:, 0], u[0])).max() < 1e-5


def test_components_need_centred_exits(smoke_config):
  config = smoke_config(**{"model.exit_components": 2})
  with pytest.raises(ConfigError, match="model.exit_components=2 .*centred_exits"):
    check_model_config(config)
  config = smoke_config(**{"model.exit_components": -1, "model.centred_exits": True})
  with pytest.raises(ConfigError, match="model.exit_components=-1"):
    check_model_config(config)


def test_the_sample_spreads_over_each_source_by_weight():
  a = [f"a{i}" for i in range(100)]
  b = [f"b{i}" for i in range(1000)]
  got = centring.centring_sample([a, b], [1.0, 3.0], 40)
  assert got[:10] == [a[i] for i in np.linspace(0, 99, 10).round().astype(int)]
  assert got[10:] == [b[i] for i in np.linspace(0, 999, 30).round().astype(int)]
  assert centring.centring_sample([a[:3]], [1.0], 50) == a[:3]   # all of a small source


def _centred_run(smoke_config, **overrides):
  config = smoke_config(**{"model.centred_exits": True, "model.centring_texts": 64,
                           "train.dropout": False, **overrides})
  config.loss.distill.update(weight=1.0, anchor_weight=1.0)   # allowed with a teacher
  return train.setup(config, "/nonexistent-unused", devices=jax.devices()[:2])


def test_layer_means_against_a_per_text_loop(smoke_config):
  run = _centred_run(smoke_config, **{"model.exit_components": 3})
  assert len(run.centring_texts) == 64
  _, shardings = train.abstract_state(run)
  params = initial_params(run)
  got, components = centring.exit_statistics(run, params, list(run.centring_texts))
  host = jax.tree.map(np.asarray, shd.local_value(params))
  host[CENTER] = np.zeros_like(host[CENTER])
  host[COMPONENTS] = np.zeros_like(host[COMPONENTS])
  rows = []
  for text in run.centring_texts:      # one text at a time, no batching or sorting
    enc = run.tokenizer.encode([text])
    rows.append(np.asarray(run.model.apply({"params": host}, enc["input_ids"],
                                           enc["attention_mask"]))[0])
  want = np.mean(np.float64(rows), axis=0)
  assert got.shape == (2, 32)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got[1], 0.0)      # the last layer is not centred
  assert np.linalg.norm(got[0]) > 0.1
  # The directions: the covariance's top eigenvectors (another route than the SVD),
  # compared as projectors, and each one's largest-magnitude coordinate positive.
  assert components.shape == (2, 3, 32)
  centred = np.float64(rows)[:, 0] - want[0]
  eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
  top = vectors[:, ::-1][:, :3].T
  assert eigenvalues[-3] > 1.5 * eigenvalues[-4]   # separated: a stable subspace
  u = np.float64(components[0])
  np.testing.assert_allclose(u @ u.T, np.eye(3), atol=1e-5)
  np.testing.assert_allclose(u.T @ u, top.T @ top, atol=2e-3)
  assert (u[np.arange(3), np.abs(u).argmax(axis=1)] > 0).all()
  np.testing.assert_array_equal(components[1], 0.0)


def test_the_means_stay_fixed_through_training(smoke_config):
  run = _centred_run(smoke_config, **{"model.exit_components": 2})
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  start = jax.tree.map(np.asarray, shd.local_value(state.params))
  means, components = centring.exit_statistics(run, initial_params(run),
                                               list(run.centring_texts))
  np.testing.assert_allclose(start[CENTER], means, rtol=1e-6)
  np.testing.assert_allclose(start[COMPONENTS], components, rtol=1e-6, atol=1e-7)
  step_fn = train.compile_train_step(run, shardings)
  it = iter(run.dataset)
  for _ in range(3):
    state, _ = step_fn(state, shd.host_batch_to_global(run.mesh, next(it)))
  end = jax.tree.map(np.asarray, shd.local_value(state.params))
  np.testing.assert_array_equal(end[CENTER], start[CENTER])
  np.testing.assert_array_equal(end[COMPONENTS], start[COMPONENTS])
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), end["encoder"],
                       start["encoder"])
  assert max(jax.tree.leaves(moved)) > 1e-5
  # Merging's θ0 ('pretrained') is the start as training sees it, means included.
  from jaxembed.train import merge
  theta0 = jax.tree.map(np.asarray, shd.local_value(merge.load_params(run, "pretrained")))
  np.testing.assert_allclose(theta0[CENTER], start[CENTER], rtol=1e-6)


# The pair loss alone on the smoke model, whose centred exits these tests switch.
PAIRS = "--config=configs/ood_ablation.py:smoke,arm=pairs"


def test_before_scores_the_uncentred_model(tmp_path, tfds_dir):
  """Two runs from the same initial weights, one centred: their "before" grids are
  equal (the model the run starts from), their "after" grids are not; the saved
  model loads centred."""
  common = [PAIRS, f"--config.data.tfds_dir={tfds_dir}",
            "--config.train.steps=2", "--config.train.checkpoint_every=2"]
  grids = {}
  for centred in (False, True):
    workdir = tmp_path / f"centred_{centred}"
    done = run_train(common + [f"--workdir={workdir}",
                               f"--config.model.centred_exits={centred}"])
    assert done.returncode == 0, done.stderr[-3000:]
    grids[centred] = json.loads((workdir / "metrics.json").read_text())
  assert grids[True]["before"] == grids[False]["before"]
  assert grids[True]["after"] != grids[False]["after"]
  import jaxembed
  model = jaxembed.load(str(tmp_path / "centred_True"))
  assert model.spec.centred_exits and np.abs(np.asarray(model.params[CENTER][0])).max() > 0


def test_refreshed_at_the_end_from_the_trained_model(tmp_path, tfds_dir, smoke_config):
  """model.refresh_exits_at_end: the saved model's means and directions are those of
  its own trained layers (not the initial model's, which trained it)."""
  workdir = tmp_path / "refreshed"
  done = run_train([PAIRS, f"--workdir={workdir}",
                    f"--config.data.tfds_dir={tfds_dir}", "--config.train.steps=3",
                    "--config.train.checkpoint_every=2", "--config.eval.before=False",
                    "--config.train.dropout=False", "--config.model.centred_exits=True",
                    "--config.model.centring_texts=64", "--config.model.exit_components=2",
                    "--config.model.refresh_exits_at_end=True"])
  assert done.returncode == 0, done.stderr[-3000:]
  import jaxembed
  saved = jaxembed.load(str(workdir)).params
  run = _centred_run(smoke_config, **{"model.exit_components": 2})
  texts = list(run.centring_texts)
  trained = jax.tree.map(lambda x, s: shd.host_to_global(np.asarray(x), s), dict(saved),
                         run.param_shardings)
  means, components = centring.exit_statistics(run, trained, texts)
  np.testing.assert_allclose(np.asarray(saved[CENTER]), means, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(saved[COMPONENTS]), components, atol=1e-5)
  initial, _ = centring.exit_statistics(run, initial_params(run), texts)
  assert np.abs(means - initial).max() > 1e-3       # training moved the means
