"""Supervised classification training: labelled image batches, the heads in the
parameters (MRL, MRL-E and fixed-feature classifiers, `models.classifier`).

One pure step, jitted with explicit shardings over the device mesh: the batch split
over the data-parallel axes, parameters and AdamW state laid out by the logical-axis
rules. Batches come from a grain stream of the tfds Fashion-MNIST builder,
deterministic given the seed. Runs are short (a minute on 2 CPU cores), so they are
not checkpointed; `features` gives the trained representation for probes.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxembed import sharding as shd
from jaxembed.data import pipeline
from jaxembed.errors import ConfigError
from jaxembed.losses import mrl_classification_loss
from jaxembed.models.classifier import ClassifierSpec, ImageClassifier
from jaxembed.models.vit import ViTConfig


def make_classifier(config: ml_collections.ConfigDict, arm: str) -> ImageClassifier:
  """The classifier of one arm: 'mrl', 'mrl_e' (nested dims config.dims, representation
  max(dims)) or 'ff<m>' (a fixed-feature model with an m-dim representation)."""
  dims = tuple(int(m) for m in config.dims)
  if arm in ("mrl", "mrl_e"):
    spec = ClassifierSpec(rep_dim=dims[-1], dims=dims, shared_head=arm == "mrl_e",
                          num_classes=config.num_classes)
  elif arm.startswith("ff") and arm[2:].isdigit():
    m = int(arm[2:])
    spec = ClassifierSpec(rep_dim=m, dims=(m,), num_classes=config.num_classes)
  else:
    raise ConfigError(f"arm {arm!r}; valid: mrl, mrl_e, ff<dim> (e.g. ff16)")
  return ImageClassifier(ViTConfig(**dict(config.vit)), spec)


@dataclasses.dataclass
class TrainedClassifier:
  model: ImageClassifier
  params: dict
  losses: list           # (step, loss) at every log point
  seconds: float


def _loss(model, params, batch, rng, deterministic):
  z, heads = model.apply({"params": params}, batch["pixels"], deterministic=deterministic,
                         rngs=None if deterministic else {"dropout": rng})
  spec = model.spec
  return mrl_classification_loss(z, batch["label"], heads, spec.dims,
                                 efficient=spec.shared_head)


def train_classifier(config: ml_collections.ConfigDict, arm: str, dataset, *, seed: int,
                     devices=None, log_every: int = 100) -> TrainedClassifier:
  """Trains one arm for config.train.steps on `dataset` (an iterator of host batches
  {'pixels', 'label'}, e.g. `pipeline.labelled_image_dataset`)."""
  t = config.train
  model = make_classifier(config, arm)
  mesh = shd.make_mesh(dict(config.mesh), devices)
  rules = shd.rules_from_config(())
  if t.batch_size % shd.batch_shards(mesh):
    raise ConfigError(f"train.batch_size={t.batch_size} must divide by the "
                      f"{shd.batch_shards(mesh)} data-parallel shards")
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                            *model.example_inputs()))["params"]
  param_sh = shd.param_shardings(boxed, mesh, rules)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, min(t.warmup_steps, t.steps - 1), t.steps)
  tx = optax.adamw(schedule, weight_decay=t.weight_decay)
  deterministic = not (config.vit.hidden_dropout or config.vit.attention_dropout)

  def init(rng):
    params = nn.unbox(model.init(rng, *model.example_inputs()))["params"]
    return params, tx.init(params)

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  opt_sh = jax.tree.map(lambda _: shd.replicated(mesh), abstract[1])
  # AdamW's moments take their parameter's layout.
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt_sh, param_sh,
                                 transform_non_params=lambda _: shd.replicated(mesh))
  state_sh = (param_sh, opt_sh)
  params, opt_state = shd.mesh_jit(init, mesh, rules, out_shardings=state_sh)(
      jax.random.PRNGKey(seed))

  def step(params, opt_state, batch, index):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), index)
    loss, grads = jax.value_and_grad(
        lambda p: _loss(model, p, batch, rng, deterministic))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rep = shd.replicated(mesh)
  jitted = shd.mesh_jit(step, mesh, rules,
                        in_shardings=(param_sh, opt_sh, shd.batch_sharding(mesh), rep),
                        out_shardings=(param_sh, opt_sh, rep), donate_argnums=(0, 1))
  losses, t0 = [], time.time()
  it = iter(dataset)
  for i in range(t.steps):
    batch = shd.host_batch_to_global(mesh, next(it))
    params, opt_state, loss = jitted(params, opt_state, batch, jnp.int32(i))
    if (i + 1) % log_every == 0 or i + 1 == t.steps:
      value = float(shd.local_value(loss))
      if not np.isfinite(value):
        raise FloatingPointError(f"{arm}: loss {value} at step {i + 1}")
      losses.append((i + 1, value))
      logging.info("%s step %d/%d loss %.4f (%.0fs)", arm, i + 1, t.steps, value,
                   time.time() - t0)
  params = jax.tree.map(np.asarray, shd.local_value(params))
  return TrainedClassifier(model, params, losses, time.time() - t0)


def train_on_source(config: ml_collections.ConfigDict, arm: str, source, *,
                    seed: int) -> TrainedClassifier:
  """Trains one arm on a labelled-image data source (the tfds builder's train split),
  in the seed's order, at config.train.batch_size, up to config.data.max_train_examples
  images."""
  dataset = pipeline.labelled_image_dataset(source, batch_size=config.train.batch_size,
                                            seed=seed,
                                            max_examples=config.data.max_train_examples)
  return train_classifier(config, arm, dataset, seed=seed)


def features(trained: TrainedClassifier, pixels: np.ndarray, batch: int = 1000):
  """The representation z [n, rep_dim] (float32) of images [n, H, W, C] in [0, 1]."""
  fn = jax.jit(lambda p, x: trained.model.apply({"params": p}, x, method="features"))
  return np.concatenate([np.asarray(fn(trained.params, pixels[s:s + batch]))
                         for s in range(0, len(pixels), batch)])


def head_predictions(trained: TrainedClassifier, z: np.ndarray) -> dict[int, np.ndarray]:
  """The trained head's predicted class of every row of features z, at each of the
  model's dims."""
  spec = trained.model.spec
  heads = trained.model.apply({"params": trained.params}, method="heads")
  out = {}
  for n, m in enumerate(spec.dims):
    kernel, bias = (heads[0][:m], heads[1]) if spec.shared_head else heads[n]
    out[m] = np.argmax(z[:, :m] @ np.asarray(kernel) + np.asarray(bias), axis=1)
  return out


def head_accuracy(trained: TrainedClassifier, z: np.ndarray, labels) -> dict[int, float]:
  """Accuracy of the trained head at each of the model's dims, on features z."""
  return {m: float(np.mean(pred == np.asarray(labels)))
          for m, pred in head_predictions(trained, z).items()}
