"""LoRA (optim.lora): the gradient reaching the factors is the chain rule of the merged
kernel's gradient, computed in NumPy float64; a step leaves the base weights
bit-identical with no optimizer state for them, on a data x fsdp mesh; the merged
kernel applied to inputs equals the factor form x W + s (x a) b (float64); a trained
run exports merged and loads with the vectors the run evaluates with; bad settings
are refused by name."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxembed
from jaxembed import sharding as shd, train
from jaxembed.errors import ConfigError
from jaxembed.models import lora
from jaxembed.train.step import encode_pairs
from conftest import REPO, user_env
from test_freezing import compiled, flat

TARGETS = ("attention/(query|value)/kernel", "layer_1/output/kernel")


def lora_config(smoke_config, **extra):
  config = smoke_config(**{"optim.lora.rank": 4, "optim.lora.alpha": 8.0,
                           "optim.lora.targets": TARGETS, "train.dropout": False,
                           "optim.learning_rate": 1e-2, "optim.warmup_steps": 0, **extra})
  return config


def perturbed_factors(state, seed):
  """The state's LoRA factors plus small noise (b = 0 at the start would hide a)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape)
                      .astype(np.float32), jax.device_get(state.params["lora"]))


def test_split_axis_pairs_inputs_with_outputs():
  assert lora.split_axis((32, 2, 16)) == 1          # query: [hidden, heads, head_dim]
  assert lora.split_axis((2, 16, 32)) == 2          # attention output: [heads, hd, hidden]
  assert lora.split_axis((64, 32)) == 1


def test_the_factors_gradient_is_the_chain_rule_of_the_kernels(smoke_config):
  config = lora_config(smoke_config)
  run, state, _, batch = compiled(config)
  # b starts at zero (then a's gradient is zero); give it values to test both.
  factors = perturbed_factors(state, 0)
  params = dict(state.params, lora=factors)
  s = run.view.lora_scale
  assert s == pytest.approx(8.0 / 4)

  def loss(p):
    q, d, n = encode_pairs(run.model, p, batch, None, deterministic=True)
    return run.loss_fn(q, d, n, rng=jax.random.PRNGKey(0), loss_params=None)[0]
  # jitted: op by op, the two gradients took most of a minute
  got = jax.jit(jax.grad(lambda p: loss(lora.merge(p, s))))(params)["lora"]
  merged = lora.merge(params, s)
  kernel_grad = jax.jit(jax.grad(loss))(merged)   # the gradient at the merged kernels
  assert set(got) == {k.replace("/", ".") for k in flat(state.params)
                      if any(re.search(t, k) for t in TARGETS)}
  for key, g in got.items():
    node = kernel_grad
    for part in key.split("."):
      node = node[part]
    a = np.asarray(factors[key]["a"], np.float64)
    b = np.asarray(factors[key]["b"], np.float64)
    g2 = np.asarray(node, np.float64).reshape(a.shape[0], b.shape[1])
    np.testing.assert_allclose(np.asarray(g["a"]), s * g2 @ b.T, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g["b"]), s * a.T @ g2, rtol=2e-4, atol=1e-7)
    assert np.abs(g2).max() > 0


def test_merged_kernels_equal_the_factor_form():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((2, 16, 32))        # [heads, head_dim, hidden]
  a, b = rng.standard_normal((32, 3)), rng.standard_normal((3, 32))
  params = {"encoder": {"o": {"kernel": w}}, "lora": {"encoder.o.kernel": {"a": a, "b": b}}}
  merged = lora.merge(params, 0.5)
  assert set(merged) == {"encoder"}
  x = rng.standard_normal((5, 32))
  got = x @ np.asarray(merged["encoder"]["o"]["kernel"]).reshape(32, 32)
  want = x @ w.reshape(32, 32) + 0.5 * (x @ a) @ b
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_step_trains_only_the_factors_on_a_sharded_mesh(smoke_config):
  config = lora_config(smoke_config)
  config.mesh.update(data=4, fsdp=2)
  run, state, step_fn, batch = compiled(config)
  before = flat(state.params)
  lora_keys = {k for k in before if k.startswith("lora/")}
  assert lora_keys and all(not before[k].any() for k in lora_keys if k.endswith("/b"))
  for _ in range(2):
    state, _ = step_fn(state, batch)
  after = flat(state.params)
  for key in before:
    if key in lora_keys:
      continue
    assert np.array_equal(after[key], before[key]), key    # the base is bit-identical
  assert any(np.abs(after[k]).max() > 0 for k in lora_keys if k.endswith("/b"))
  opt_entries = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  assert opt_entries == 2 * sum(before[k].size for k in lora_keys)


def test_unmerged_without_dropout_equals_the_merged_model(smoke_config):
  config = lora_config(smoke_config)
  run, state, _, batch = compiled(config)
  factors = perturbed_factors(state, 2)
  params = dict(state.params, lora=factors)
  merged = encode_pairs(run.model, lora.merge(params, run.view.lora_scale), batch, None,
                        deterministic=True)
  base = {k: v for k, v in params.items() if k != "lora"}
  with lora.unmerged(factors, run.view.lora_scale, 0.0, jax.random.key(0)):
    unmerged = encode_pairs(run.model, base, batch, None, deterministic=True)
  for m, u in zip(merged, unmerged):
    np.testing.assert_allclose(np.asarray(u), np.asarray(m), rtol=1e-5, atol=1e-5)
  plain = encode_pairs(run.model, base, batch, None, deterministic=True)
  assert np.abs(np.asarray(plain[0]) - np.asarray(merged[0])).max() > 1e-3  # factors matter


def test_lora_dropout_is_the_factor_form_on_dropped_inputs():
  """One adapted Linear (an attention output, 2 input axes) under dropout: its output
  and the factors' gradients equal the float64 NumPy form y = x W + bias + s (h a) b,
  h = x * keep / (1 - rate), given the same keep mask."""
  import flax.linen as nn
  import jax.numpy as jnp
  from jaxembed.models.layers import Linear

  class Model(nn.Module):       # the Linear at path 'o', as inside an encoder
    @nn.compact
    def __call__(self, x):
      return Linear((32,), ("heads", "kv", "embed"), in_dims=2, name="o")(x)

  rng = np.random.default_rng(3)
  layer = Model()
  x = rng.standard_normal((5, 7, 2, 16)).astype(np.float32)
  params = nn.meta.unbox(layer.init(jax.random.key(0), x)["params"])
  w = np.asarray(params["o"]["kernel"], np.float64).reshape(32, 32)
  bias = 0.1 + np.asarray(params["o"]["bias"], np.float64)
  params["o"]["bias"] = bias.astype(np.float32)   # a nonzero bias, to see it kept
  a = (0.3 * rng.standard_normal((32, 4))).astype(np.float32)
  b = (0.3 * rng.standard_normal((4, 32))).astype(np.float32)
  g = rng.standard_normal((5, 7, 32))
  s, rate, key = 1.5, 0.3, jax.random.key(7)

  def out(factors):
    with lora.unmerged({"o.kernel": factors}, s, rate, key):
      return layer.apply({"params": params}, jnp.asarray(x))
  y = out({"a": a, "b": b})
  got = jax.grad(lambda f: jnp.sum(out(f) * g))({"a": a, "b": b})

  keep = np.asarray(lora.dropout_keep(key, "o.kernel", (5, 7, 32), rate))
  assert 0.5 < keep.mean() < 0.9                     # about 1 - rate are kept
  x2 = x.reshape(5, 7, 32).astype(np.float64)
  h = np.where(keep, x2 / (1 - rate), 0.0)
  want = x2 @ w + bias + s * (h @ a) @ b
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)
  h2, g2 = h.reshape(-1, 32), g.reshape(-1, 32)
  np.testing.assert_allclose(np.asarray(got["a"]), s * h2.T @ g2 @ b.T, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(got["b"]), s * (h2 @ a).T @ g2, rtol=1e-4, atol=1e-4)


def test_a_step_with_lora_dropout_draws_its_masks_from_the_step_key(smoke_config):
  def two_steps(rate):
    run, state, step_fn, batch = compiled(lora_config(smoke_config, **{
        "optim.lora.dropout": rate}))
    losses = []
    for _ in range(2):
      state, m = step_fn(state, batch)
      losses.append(float(shd.local_value(m)["loss"]))
    return losses, flat(state.params)
  plain, p0 = two_steps(0.0)
  dropped, p1 = two_steps(0.5)
  again, p2 = two_steps(0.5)
  assert plain[0] == pytest.approx(dropped[0], rel=1e-6)   # b = 0: no low-rank path yet
  assert abs(plain[1] - dropped[1]) > 1e-6                 # then the masks change the loss
  assert dropped == again and all(np.array_equal(p1[k], p2[k]) for k in p1)
  assert all(np.array_equal(p0[k], p1[k]) for k in p0 if not k.startswith("lora/"))


def test_a_lora_run_exports_merged_and_loads_as_it_evaluated(smoke_config, tmp_path):
  config = lora_config(smoke_config, **{"train.steps": 4, "train.checkpoint_every": 4,
                                        "eval.before": False})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  texts = ["a small dog", "the river bank", "to run quickly"]
  loaded = jaxembed.load(workdir)
  assert "lora" not in loaded.params
  # The run's own view: its restored parameters, merged (merge.load_params merges).
  run = train.setup(config, str(tmp_path / "unused"))
  from jaxembed.train.merge import load_params
  params = jax.device_get(load_params(run, workdir))
  assert "lora" not in params
  base = jax.device_get(load_params(run, "pretrained"))
  query = lambda p: np.asarray(p["encoder"]["layer_0"]["attention"]["query"]["kernel"])
  assert np.abs(query(params) - query(base)).max() > 0      # LoRA moved the kernel
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               {k: v for k, v in params.items() if k != "loss"},
               {k: v for k, v in loaded.params.items() if k != "loss"})
  out = tmp_path / "exported"
  ran = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={workdir}",
                        f"--out={out}"], cwd=REPO, env=user_env(), capture_output=True,
                       text=True, timeout=300)
  assert ran.returncode == 0, ran.stderr[-2000:]
  np.testing.assert_allclose(jaxembed.load(str(out)).encode(texts), loaded.encode(texts),
                             atol=1e-5)


@pytest.mark.parametrize("field, value, match", [
    ("optim.lora.targets", (), "optim.lora.targets is empty"),
    ("optim.lora.targets", ("no_such_kernel",), "'no_such_kernel' matches no kernel"),
    ("optim.lora.targets", ("embeddings_norm",), "'embeddings_norm' matches no kernel"),
    ("optim.lora.rank", 999, "optim.lora.rank=999 exceeds"),
    ("optim.lora.rank", -1, "optim.lora.rank=-1 must be >= 0"),
    ("optim.lora.dropout", 1.0, r"optim.lora.dropout=1.0 must be in \[0, 1\)")])
def test_bad_lora_settings_are_refused(smoke_config, field, value, match):
  config = lora_config(smoke_config, **{field: value})
  with pytest.raises(ConfigError, match=match):
    train.setup(config, "/nonexistent-unused")


def test_lora_dropout_on_a_scanned_decoder_is_refused(smoke_config):
  config = lora_config(smoke_config, **{
      "optim.lora.dropout": 0.1, "model.encoder": "decoder",
      "model.decoder.hidden_size": 32, "model.decoder.num_layers": 2,
      "model.decoder.num_heads": 4, "model.decoder.num_kv_heads": 2,
      "model.decoder.intermediate_size": 48, "model.decoder.scan_layers": True})
  with pytest.raises(ConfigError, match=r"optim.lora.dropout.*scan_layers=False"):
    train.setup(config, "/nonexistent-unused")
